"""What every benchmark shares: starting rpad (or a comparison server) as its own process,
minting tokens, reading a process's CPU time and memory from /proc, medians.

Every server and every load generator runs in a separate process, on loopback only, for a
bounded time. CPU time is read from ``/proc/<pid>/stat`` before and after a measured window,
so a result can show which side was busy: a load generator far from 100 % of a core was not the
bottleneck.

Resource handling: :class:`Server` is a context manager; leaving it terminates the process
(SIGTERM, then SIGKILL after ``STOP_TIMEOUT_SECONDS``) and removes nothing else — temporary
directories belong to the caller.
Error handling: a server that exits or stays silent before it is ready raises
:class:`BenchError` with the tail of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# The checkout whose rpad is measured (default: this one). Its processes run with it first on
# PYTHONPATH, so ``BENCH_RPAD_ROOT=/some/other/checkout`` measures that rpad with these
# benchmarks.
RPAD_ROOT = Path(os.environ.get("BENCH_RPAD_ROOT", ROOT)).resolve()
PYTHON = sys.executable
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
LOOPBACK = "127.0.0.1"


class BenchError(Exception):
    """A benchmark could not run (a server did not start, a tool is missing)."""


# -- processes ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # After the command name: state is fields[0]; utime and stime are fields 14 and 15 of
    # the whole line, i.e. fields[11] and fields[12] here.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_SECOND


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) / CLOCK_TICKS_PER_SECOND, int(fields[12]) / CLOCK_TICKS_PER_SECOND


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


class CpuWindow:
    """CPU use of several processes over a window: ``start()``, run the load, ``stop()``;
    then ``percent(pid)`` is the share of one core that process used."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self._start: dict[int, float] = {}
        self._end: dict[int, float] = {}
        self._t0 = self._t1 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {p: cpu_seconds(p) for p in self.pids}
        self._split0 = {p: cpu_split(p) for p in self.pids}

    def stop(self) -> None:
        self._end = {}
        self._split1: dict[int, tuple[float, float]] = {}
        for p in self.pids:
            with contextlib.suppress(OSError):
                self._end[p] = cpu_seconds(p)
                self._split1[p] = cpu_split(p)
        self._t1 = time.monotonic()

    def system_share(self, pid: int) -> float:
        """The part of a process's CPU time in the window spent in the kernel (0..1)."""
        if pid not in self._split1:
            return float("nan")
        user = self._split1[pid][0] - self._split0[pid][0]
        system = self._split1[pid][1] - self._split0[pid][1]
        return system / (user + system) if user + system > 0 else float("nan")

    def percent(self, pid: int) -> float:
        wall = self._t1 - self._t0
        if wall <= 0 or pid not in self._end:
            return float("nan")
        return 100.0 * (self._end[pid] - self._start[pid]) / wall


def rpad_env() -> dict[str, str]:
    """The environment of a process that imports the measured rpad."""
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=f"{RPAD_ROOT}:{path}" if path else str(RPAD_ROOT))


def wait_with_cpu(proc: subprocess.Popen[str]) -> tuple[str, float]:
    """Read a child's whole output and reap it; returns (output, its CPU seconds: user +
    system of all its threads, from the kernel's accounting at exit)."""
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return out, usage.ru_utime + usage.ru_stime


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Server:
    """A server process that prints a line matching ``ready`` (with a URL group) when it
    listens. Its stdout and stderr go to ``log_path``."""

    def __init__(self, argv: Sequence[str], log_path: Path, ready: str,
                 env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.ready = re.compile(ready)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.match: re.Match[str] | None = None
        self.started_seconds = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Server:
        env = dict(rpad_env(), PYTHONUNBUFFERED="1", **(self.env or {}))
        log = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=RPAD_ROOT)
        log.close()
        deadline = t0 + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            m = self.ready.search(text)
            if m:
                self.match = m
                self.started_seconds = time.monotonic() - t0
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        stop_process(self.proc)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise BenchError(f"{' '.join(self.argv)} did not become ready:\n{tail}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def group(self, name: str) -> str:
        assert self.match is not None
        return self.match.group(name)


# -- rpad --------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def write_toml(path: Path, data: dict[str, Any]) -> None:
    """A two-level dict (top-level keys and [sections]) as TOML."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")


# The benchmarks' load comes from one loopback address, thousands of connections at once: the
# connection caps (README, "Connection limits") are lifted so that they measure rpad, not its
# limits. bench/hostile.py, which measures the limits, sets them back.
BENCH_CONNECTION_CAP = 1_000_000


def knows_connection_caps() -> bool:
    """Whether the rpad measured (BENCH_RPAD_ROOT) has the connection caps (an older one
    refuses their keys)."""
    config = RPAD_ROOT / "rpad" / "config.py"
    return config.is_file() and "max_connections_per_address" in config.read_text()


def knows_fleet_cap() -> bool:
    """Whether the rpad measured has presence.max_clients (the benchmarks' fleets of 100,000
    clients, registered as fast as a gateway can, are lifted above it)."""
    config = RPAD_ROOT / "rpad" / "config.py"
    return config.is_file() and "max_clients" in config.read_text()


def rpad_config(state_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A bench configuration: ports 0 on loopback, state in ``state_dir``, quiet logs, the
    connection caps and the fleet's bounds lifted."""
    caps = ({"max_connections": BENCH_CONNECTION_CAP,
             "max_connections_per_address": BENCH_CONNECTION_CAP}
            if knows_connection_caps() else {})
    fleet = ({"max_clients": BENCH_CONNECTION_CAP, "registrations_per_minute": 1e9}
             if knows_fleet_cap() else {})
    base: dict[str, Any] = {
        "state_dir": str(state_dir),
        "http": {"listen": f"{LOOPBACK}:0", **caps},
        "websocket": {"listen": f"{LOOPBACK}:0", **caps},
        "logging": {"level": "warning"},
    }
    if fleet:
        base["presence"] = fleet
    for name, table in sections.items():
        base[name] = {**base.get(name, {}), **table}
    return base


class Rpad(Server):
    """``python -m rpad serve --config <tmp>/rpad.toml``; ``http_url``/``ws_url`` once ready."""

    def __init__(self, workdir: Path, config: dict[str, Any], *,
                 lift_message_limit: bool = False) -> None:
        """``lift_message_limit``: run bench/rpad_serve.py (the same daemon without the hub's
        limit on client messages per connection) for a publisher that floods on purpose."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "rpad.toml"
        write_toml(self.config_path, config)
        self._auth: Any = None
        launcher = [str(BENCH_DIR / "rpad_serve.py")] if lift_message_limit else ["-m", "rpad"]
        argv = [PYTHON, *launcher] + ([] if lift_message_limit else ["serve"])
        super().__init__([*argv, "--config", str(self.config_path)],
                         workdir / "rpad.log", r"HTTP API (?P<http>http://\S+)")

    def __enter__(self) -> Rpad:
        super().__enter__()
        # The hub's URL is printed on the next line when the hub runs.
        deadline = time.monotonic() + 2.0
        self.ws_url: str | None = None
        while time.monotonic() < deadline:
            m = re.search(r"WebSocket hub (ws://\S+)", self.log_path.read_text(errors="replace"))
            if m:
                self.ws_url = m.group(1)
                break
            if "dashboard" in self.log_path.read_text(errors="replace"):
                break
            time.sleep(0.01)
        return self

    @property
    def http_url(self) -> str:
        return self.group("http")

    def token(self, role: str, sub: str, **claims: Any) -> str:
        """A token signed with this rpad's key (read from its state directory)."""
        if self._auth is None:
            from rpad import config as config_mod
            from rpad.auth import Authenticator, load_keys

            cfg = config_mod.load(str(self.config_path))
            self._auth = Authenticator(load_keys(cfg, generate=False), clock=time.time)
        return str(self._auth.mint(role=role, sub=sub, ttl_seconds=86400, **claims))


# -- numbers -----------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def need(tool: str) -> str:
    import shutil

    path = shutil.which(tool)
    if path is None:
        raise BenchError(f"{tool} is not installed (Debian: apt install {tool})")
    return path


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
