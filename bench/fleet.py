"""Scale of the fleet: the work rpad does per push and per sweep, and its start-up, at 1k, 10k and
100k clients.

- ``SERVER_LIST``: building and serializing the whole list (``Registry.servers_json()`` and the
  hub's envelope) *cold* (every client changed since the last push: every fragment is
  re-serialized) and *steady* (a fleet that beats every 30 s: 1/15 of the clients changed in
  the 2 s since the last push). Next to it, the limit of the layer: the standard library's C
  JSON encoder serializing the same views, already built, in one call.
- ``SERVER_LIST_DELTA`` (``push.mode = "delta"``): the same steady tick, only what changed.
- The sweep over 100k online clients when nobody has timed out (every sweep but a few), and
  when 1% have.
- Start-up with 100k clients in the database: from ``exec`` of ``python -m rpad serve`` to
  its "listening" line (the registry loaded, both listeners bound), next to the same with an
  empty database (the floor: interpreter, imports, binding).

The in-process figures run in a worker process of their own (``--worker``), each the median of
several repetitions.

    python bench/fleet.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import PYTHON, Rpad, median, rpad_config, rpad_env

T0 = 1_767_225_600.0
STEADY_FRACTION = 1 / 15  # beats every 30 s, pushes every 2 s


def _rpad(module: str, before_layers: str) -> Any:
    """An rpad module by its path, or by its path before the layers (BENCH_RPAD_ROOT at an
    older checkout)."""
    try:
        return importlib.import_module(f"rpad.{module}")
    except ImportError:
        return importlib.import_module(f"rpad.{before_layers}")


def _heartbeat(i: int) -> Any:
    Heartbeat = _rpad("core.validation", "models").Heartbeat

    return Heartbeat(
        client_id=f"robot-{i:06d}", status="online" if i % 7 else "busy",
        version=f"2.{i % 5}.{i % 11}", ip_address=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
        os_type="linux" if i % 3 else "windows", name=f"Robot {i}", interval_seconds=30.0,
        timestamp=T0 - 0.25,
        metrics={"cpuUsagePercent": (i * 7) % 100 + 0.5, "memoryUsageBytes": 2.0e9 + i,
                 "memoryTotalBytes": 8.0e9, "load1": 0.42, "uptimeSeconds": 86400.0 + i},
        metadata={"site": f"plant-{i % 13}", "line": i % 4} if i % 2 else None)


def build(n: int) -> Any:
    Registry = _rpad("core.registry", "registry").Registry

    reg = Registry(default_timeout_seconds=60.0, min_interval_seconds=0.0, auto_register=True)
    for i in range(n):
        reg.heartbeat(_heartbeat(i), T0 + i * 1e-5)
    return reg


def _median_seconds(fn: Callable[[], Any], prepare: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        prepare()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def worker(quick: bool) -> dict[str, Any]:
    repeat = 3 if quick else 7
    out: dict[str, Any] = {}
    rng = random.Random(1)
    for n in (1000, 10_000, 100_000):
        out.update(_fleet_of(n, repeat, rng))
    return out


def _fleet_of(n: int, repeat: int, rng: random.Random) -> dict[str, Any]:
    envelope = _rpad("core.jsonenc", "hub").envelope
    iso = _rpad("core.times", "models").iso

    out: dict[str, Any] = {}
    clock = [T0 + 10.0]
    reg = build(n)
    hbs = [_heartbeat(i) for i in range(n)]
    steady_ids = max(1, int(n * STEADY_FRACTION))

    def beat(indices: range | list[int]) -> None:
        clock[0] += 1.0
        for i in indices:
            reg.heartbeat(hbs[i], clock[0])

    def server_list() -> str:
        return envelope("SERVER_LIST", "servers", 1, iso(clock[0]), reg.servers_json())

    cold = _median_seconds(server_list, lambda: beat(range(n)), repeat)
    steady = _median_seconds(server_list, lambda: beat(rng.sample(range(n), steady_ids)),
                             repeat)
    views = reg.views()
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    stdlib = _median_seconds(lambda: encode({"servers": views}), lambda: None, repeat)
    entry = {"cold_ms": cold * 1e3, "steady_ms": steady * 1e3, "stdlib_ms": stdlib * 1e3,
             "bytes": len(server_list())}
    delta_json = getattr(reg, "delta_json", None)  # an rpad without push.mode = "delta"
    if delta_json is not None:
        since = [reg.revision]

        def delta() -> str:
            text = delta_json(since[0])
            since[0] = reg.revision
            assert text is not None
            return envelope("SERVER_LIST_DELTA", "servers", 1, iso(clock[0]), text)

        entry["delta_ms"] = _median_seconds(
            delta, lambda: beat(rng.sample(range(n), steady_ids)), repeat) * 1e3
    out[f"server_list_{n}"] = entry
    if n != 100_000:
        return out

    now = clock[0] + 1.0  # nobody has timed out
    out["sweep_none_ms"] = _median_seconds(lambda: reg.sweep(now), lambda: None, repeat) * 1e3
    victims = rng.sample(range(n), n // 100)
    victim_set = set(victims)

    def expire() -> None:  # 1% fell silent 62 s ago; the rest beat just now
        clock[0] += 1.0
        for i in victims:  # (back online after the previous repetition)
            reg.heartbeat(hbs[i], clock[0])
        clock[0] += 62.0
        for i in range(n):
            if i not in victim_set:
                reg.heartbeat(hbs[i], clock[0])

    swept: list[int] = []
    out["sweep_1pct_ms"] = _median_seconds(
        lambda: swept.append(len(reg.sweep(clock[0] + 0.5))), expire, repeat) * 1e3
    out["sweep_1pct_events"] = swept[-1]
    return out


def _make_db(path: Path, n: int) -> None:
    Store = _rpad("backend.local.store", "store").Store

    reg = build(n)
    store = Store(path)
    store.open()
    for c in reg:
        store.put_client(c)
    store.close()  # commits what is staged


def startup(quick: bool, work: Path) -> dict[str, Any]:
    runs = 1 if quick else 5
    n = 100_000
    full_state = work / "startup-full"
    subprocess.run([PYTHON, __file__, "--make-db", str(full_state / "rpad.db"), str(n)],
                   env=rpad_env(), check=True)
    times: dict[str, list[float]] = {"full": [], "empty": []}
    for r in range(runs):
        for kind in ("empty", "full"):
            state = full_state if kind == "full" else work / f"startup-empty-{r}"
            with Rpad(work / f"startup-{kind}-{r}", rpad_config(state)) as rpad:
                times[kind].append(rpad.started_seconds)
    return {"clients": n, "full_s": median(times["full"]), "empty_s": median(times["empty"]),
            "runs": times}


def run(quick: bool, work: Path) -> dict[str, Any]:
    argv = [PYTHON, __file__, "--worker"] + (["--quick"] if quick else [])
    proc = subprocess.run(argv, capture_output=True, text=True, check=True, env=rpad_env())
    out: dict[str, Any] = json.loads(proc.stdout)
    out["startup"] = startup(quick, work)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--make-db", nargs=2, metavar=("PATH", "CLIENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_db:
        _make_db(Path(args.make_db[0]), int(args.make_db[1]))
        return
    if args.worker:
        json.dump(worker(args.quick), sys.stdout)
        return
    with tempfile.TemporaryDirectory(prefix="rpad-bench-") as tmp:
        print(json.dumps(run(args.quick, Path(tmp)), indent=1))


if __name__ == "__main__":
    main()
