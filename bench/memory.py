"""Memory: resident set size per idle authenticated WebSocket connection, at 2,000 connections,
next to the bare trio-websocket server (the floor of rpad's WebSocket layer).

The server runs in its own process; the connections are held by a client process (plain
sockets, bench/wsload.py). rpad's connections authenticate with ``?token=`` and get their
``CONNECTION_ESTABLISHED``; then they stay idle. The figure is (RSS with all connections − RSS
with a first few, once warm) / the number added, in KiB.

    python bench/memory.py [--quick] [--connections 2000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import wsload
from common import BENCH_DIR, PYTHON, Rpad, Server, median, rpad_config, rss_bytes

WARM_CONNECTIONS = 50
SETTLE_SECONDS = 1.0


def _hold(urls: list[str], needle: bytes) -> list[wsload.Conn]:
    conns = []
    for url in urls:
        sock, rest = wsload.connect(url)
        c = wsload.Conn(sock, rest)
        c.read_until(needle, 30)
        conns.append(c)
    return conns


def measure(urls: list[str], pid: int, needle: bytes) -> dict[str, Any]:
    """Hold the first WARM_CONNECTIONS of ``urls``, then the rest; RSS growth per connection."""
    count = len(urls) - WARM_CONNECTIONS
    warm = _hold(urls[:WARM_CONNECTIONS], needle)
    time.sleep(SETTLE_SECONDS)
    before = rss_bytes(pid)
    conns = _hold(urls[WARM_CONNECTIONS:], needle)
    time.sleep(SETTLE_SECONDS)
    after = rss_bytes(pid)
    for c in warm + conns:
        c.sock.close()
    return {"connections": count, "rss_before_mib": before / 2**20,
            "rss_after_mib": after / 2**20, "kib_per_connection": (after - before) / count / 1024}


def run(quick: bool, work: Path, connections: int = 2000) -> dict[str, Any]:
    runs = 1 if quick else 3
    count = 500 if quick else connections
    rp: list[dict[str, Any]] = []
    floor: list[dict[str, Any]] = []
    for r in range(runs):  # a fresh server per run: RSS only grows
        with Rpad(work / f"memory-{r}", rpad_config(work / f"memory-state-{r}")) as rpad:
            assert rpad.ws_url is not None
            # One user per connection, as dashboards are (the per-user limit stays default).
            urls = [f"{rpad.ws_url}?token={rpad.token('viewer', f'bench-user-{i}')}"
                    for i in range(WARM_CONNECTIONS + count)]
            rp.append(measure(urls, rpad.pid, b"CONNECTION_ESTABLISHED"))
        with Server([PYTHON, str(BENCH_DIR / "ws_servers.py"), "trio"],
                    work / f"memory-trio-{r}.log", r"listening on (?P<url>ws://\S+)") as bare:
            floor.append(measure([f"{bare.group('url')}/sub"] * (WARM_CONNECTIONS + count),
                                 bare.pid, b"SUBSCRIBED"))
    return {
        "connections": count,
        "rpad_kib": median([x["kib_per_connection"] for x in rp]),
        "trio_kib": median([x["kib_per_connection"] for x in floor]),
        "rpad_rss_after_mib": median([x["rss_after_mib"] for x in rp]),
        "runs": {"rpad": rp, "trio": floor},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rpad-bench-") as tmp:
        out = run(args.quick, Path(tmp), args.connections)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
