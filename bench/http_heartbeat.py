"""Heartbeat throughput over HTTP: ``POST /api/v1/client/heartbeat`` on the real daemon next to
a trivial ASGI app on the same Hypercorn-on-Trio setup (bench/asgi_ceiling.py), measured in
the same run with wrk (keep-alive) and bench/heartbeat.lua.

Both servers run as separate processes on 127.0.0.1. rpad runs with
``presence.min_interval_seconds = 0`` (no 429s) and its defaults otherwise: group commit every
``storage.commit_interval_ms``, each 2xx sent only after its commit. The load names many
distinct client ids. Runs alternate (trivial app, rpad, trivial app, rpad, ...) so both see the
same machine; each figure is the median of ``--runs`` runs, and the ratio is the median of the
per-pair ratios. Prints a small table.

    python bench/http_heartbeat.py [--runs 5] [--seconds 5] [--connections 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import BENCH_DIR, PYTHON, CpuWindow, Rpad, Server, median, need, rpad_config

LUA = BENCH_DIR / "heartbeat.lua"
CLIENTS_PER_THREAD = 10_000


def wrk(url: str, *, seconds: float, connections: int, threads: int, token: str,
        cpu_pid: int | None) -> dict[str, Any]:
    """One wrk run against ``url``: its result line, requests per second, and the server's
    share of one core over the run."""
    argv = [need("wrk"), "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
            "--timeout", "10s", "-s", str(LUA), url]
    env = {**os.environ, "BENCH_TOKEN": token, "BENCH_CLIENTS": str(CLIENTS_PER_THREAD)}
    window = CpuWindow([cpu_pid] if cpu_pid else [])
    window.start()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True,
                         timeout=seconds + 60).stdout
    window.stop()
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = sum(r[k] for k in ("errors_status", "errors_connect", "errors_read",
                                     "errors_write", "errors_timeout"))
    r["cpu"] = window.percent(cpu_pid) if cpu_pid else float("nan")
    return r


def stored_clients(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM clients").fetchone()[0])
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rpad-bench-") as tmp:
        work = Path(tmp)
        cfg = rpad_config(work / "state", presence={"min_interval_seconds": 0})
        with Rpad(work / "rpad", cfg) as rpad, Server(
                [PYTHON, str(BENCH_DIR / "asgi_ceiling.py")], work / "trivial.log",
                r"listening on (?P<url>http://\S+)") as trivial:
            token = rpad.token("service", "bench-gateway")
            common = {"connections": args.connections, "threads": args.threads, "token": token}
            # Warm-up: every client id is registered once, both servers are warm.
            wrk(rpad.http_url, seconds=3, cpu_pid=None, **common)
            wrk(trivial.group("url"), seconds=1, cpu_pid=None, **common)
            pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for _ in range(args.runs):
                t = wrk(trivial.group("url"), seconds=args.seconds, cpu_pid=trivial.pid,
                        **common)
                r = wrk(rpad.http_url, seconds=args.seconds, cpu_pid=rpad.pid, **common)
                pairs.append((r, t))
        stored = stored_clients(work / "state" / "rpad.db")

    rows = [("rpad POST /api/v1/client/heartbeat", [r for r, _ in pairs]),
            ("trivial Hypercorn-on-Trio ASGI app", [t for _, t in pairs])]
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.seconds:g}s, keep-alive, "
          f"{args.runs} runs each (alternating), {CLIENTS_PER_THREAD * args.threads} "
          "distinct client ids")
    print(f"{'server':<38} {'req/s (median)':>15} {'runs':>32} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'CPU %':>6} {'errors':>6}")
    for name, runs in rows:
        each = " ".join(f"{x['rps']:.0f}" for x in runs)
        print(f"{name:<38} {median([x['rps'] for x in runs]):>15.0f} {each:>32} "
              f"{median([x['p50_us'] / 1000 for x in runs]):>7.2f} "
              f"{median([x['p99_us'] / 1000 for x in runs]):>7.2f} "
              f"{median([x['cpu'] for x in runs]):>6.0f} {sum(x['errors'] for x in runs):>6}")
    ratio = median([r["rps"] / t["rps"] for r, t in pairs])
    print(f"rpad / trivial app: {ratio:.2f} (median of per-pair ratios); "
          f"clients in rpad's database after the run: {stored}")


if __name__ == "__main__":
    main()
