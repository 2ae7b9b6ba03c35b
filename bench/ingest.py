"""Heartbeat ingestion over HTTP, measured with wrk (a separate process, keep-alive).

1. One heartbeat per request, ``POST /api/v1/client/heartbeat`` with group commit on, next to
   the trivial ASGI app on the same Hypercorn-on-Trio setup (bench/asgi_ceiling.py): requests
   per second and latency p50/p99 of both, and rpad's share of the ceiling.
2. A gateway's batches, ``POST /api/v1/client/heartbeats`` with 100 heartbeats per request:
   heartbeats per second, durable (every 2xx waited for its commit; after the run the database
   is checked to hold every client the load named).

Runs alternate between rpad and the ceiling (ceiling, rpad, ceiling, rpad, ...) so that both
see the same machine; the figure is the median of the runs. Each client id is beaten at most
once a second (ids cycle through ``BENCH_CLIENTS`` per wrk thread), as agents would, so no
heartbeat is refused with 429; a warm-up pass registers every id first, so the measured runs
are steady-state heartbeats of known clients.

    python bench/ingest.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    PYTHON,
    CpuWindow,
    Rpad,
    Server,
    median,
    need,
    rpad_config,
    wait_with_cpu,
)

LUA = BENCH_DIR / "ingest.lua"
WRK_THREADS = 1
SINGLE_CONNECTIONS = 64
BATCH_CONNECTIONS = 16
BATCH_SIZE = 100


def run_wrk(url: str, *, seconds: float, connections: int, env: dict[str, str],
            cpu_pids: list[int]) -> dict[str, Any]:
    """One wrk run; its BENCH_RESULT plus the CPU share of wrk and of ``cpu_pids``."""
    wrk = need("wrk")
    argv = [wrk, "-t", str(WRK_THREADS), "-c", str(connections), "-d", f"{math.ceil(seconds)}s",
            "--timeout", "10s", "-s", str(LUA), url]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **env}, text=True)
    window = CpuWindow(cpu_pids)
    window.start()
    out, wrk_cpu_seconds = wait_with_cpu(proc)
    window.stop()
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["wrk_cpu"] = 100.0 * wrk_cpu_seconds / (result["duration_us"] / 1e6)
    result["cpu"] = {pid: window.percent(pid) for pid in cpu_pids}
    errors = sum(result[k] for k in ("errors_status", "errors_connect", "errors_read",
                                     "errors_write", "errors_timeout"))
    result["errors"] = errors
    return result


def _count_clients(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM clients").fetchone()[0])
    finally:
        conn.close()


def single(quick: bool, work: Path) -> dict[str, Any]:
    """One heartbeat per request: rpad vs the ceiling, side by side."""
    runs = 1 if quick else 5
    seconds = 2.0 if quick else 8.0
    clients = 4000 if quick else 20000
    cfg = rpad_config(work / "single-state")
    with Rpad(work / "single", cfg) as rpad, Server(
            [PYTHON, str(BENCH_DIR / "asgi_ceiling.py")], work / "ceiling.log",
            r"listening on (?P<url>http://\S+)") as ceiling:
        env = {"BENCH_TOKEN": rpad.token("service", "bench-gateway"), "BENCH_BATCH": "0",
               "BENCH_CLIENTS": str(clients)}
        # Warm-up: registers every id once (and warms both servers).
        run_wrk(rpad.http_url, seconds=max(2.0, clients / 2500), connections=SINGLE_CONNECTIONS,
                env=env, cpu_pids=[])
        run_wrk(ceiling.group("url"), seconds=1.0, connections=SINGLE_CONNECTIONS, env=env,
                cpu_pids=[])
        rp: list[dict[str, Any]] = []
        cl: list[dict[str, Any]] = []
        for _ in range(runs):
            cl.append(run_wrk(ceiling.group("url"), seconds=seconds,
                              connections=SINGLE_CONNECTIONS, env=env, cpu_pids=[ceiling.pid]))
            rp.append(run_wrk(rpad.http_url, seconds=seconds, connections=SINGLE_CONNECTIONS,
                              env=env, cpu_pids=[rpad.pid]))
    return {"rpad": rp, "ceiling": cl, "runs": runs, "seconds": seconds,
            "connections": SINGLE_CONNECTIONS}


def batch(quick: bool, work: Path) -> dict[str, Any]:
    """100 heartbeats per request to the batch endpoint, durable."""
    runs = 1 if quick else 5
    seconds = 2.0 if quick else 8.0
    clients = 20000 if quick else 100000
    cfg = rpad_config(work / "batch-state")
    with Rpad(work / "batch", cfg) as rpad:
        env = {"BENCH_TOKEN": rpad.token("service", "bench-gateway"),
               "BENCH_BATCH": str(BATCH_SIZE), "BENCH_CLIENTS": str(clients)}
        run_wrk(rpad.http_url, seconds=max(2.0, clients / 15000), connections=BATCH_CONNECTIONS,
                env=env, cpu_pids=[])
        rp = [run_wrk(rpad.http_url, seconds=seconds, connections=BATCH_CONNECTIONS, env=env,
                      cpu_pids=[rpad.pid]) for _ in range(runs)]
    # Stopped: every acknowledged heartbeat is in the database.
    stored = _count_clients(work / "batch-state" / "rpad.db")
    for r in rp:
        r["heartbeats_per_second"] = r["rps"] * BATCH_SIZE
    return {"rpad": rp, "runs": runs, "seconds": seconds, "connections": BATCH_CONNECTIONS,
            "clients": clients * WRK_THREADS, "stored": stored}


def summarize(single_r: dict[str, Any], batch_r: dict[str, Any]) -> dict[str, Any]:
    rp, cl = single_r["rpad"], single_r["ceiling"]
    out = {
        "single_rps": median([r["rps"] for r in rp]),
        "single_p50_ms": median([r["p50_us"] / 1000 for r in rp]),
        "single_p99_ms": median([r["p99_us"] / 1000 for r in rp]),
        "single_errors": sum(r["errors"] for r in rp),
        "single_server_cpu": median([next(iter(r["cpu"].values())) for r in rp]),
        "single_wrk_cpu": median([r["wrk_cpu"] for r in rp]),
        "ceiling_rps": median([r["rps"] for r in cl]),
        "ceiling_p50_ms": median([r["p50_us"] / 1000 for r in cl]),
        "ceiling_p99_ms": median([r["p99_us"] / 1000 for r in cl]),
        "ceiling_server_cpu": median([next(iter(r["cpu"].values())) for r in cl]),
        "ceiling_wrk_cpu": median([r["wrk_cpu"] for r in cl]),
        # Ratio of each side-by-side pair, then the median of the ratios.
        "single_ratio": median([a["rps"] / b["rps"] for a, b in zip(rp, cl, strict=True)]),
        "batch_hb_per_s": median([r["heartbeats_per_second"] for r in batch_r["rpad"]]),
        "batch_p50_ms": median([r["p50_us"] / 1000 for r in batch_r["rpad"]]),
        "batch_p99_ms": median([r["p99_us"] / 1000 for r in batch_r["rpad"]]),
        "batch_errors": sum(r["errors"] for r in batch_r["rpad"]),
        "batch_server_cpu": median([next(iter(r["cpu"].values())) for r in batch_r["rpad"]]),
        "batch_wrk_cpu": median([r["wrk_cpu"] for r in batch_r["rpad"]]),
        "batch_stored": batch_r["stored"],
        "batch_clients": batch_r["clients"],
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("single", "batch"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rpad-bench-") as tmp:
        work = Path(tmp)
        s = single(args.quick, work) if args.only != "batch" else None
        b = batch(args.quick, work) if args.only != "single" else None
    print(json.dumps({"single": s, "batch": b}, indent=1, default=str))


if __name__ == "__main__":
    main()
