"""rpad's benchmark suite: one command, one table.

    python bench/run.py            # the full suite (about 15 minutes on 2 cores)
    python bench/run.py --quick    # every benchmark once, short (a minute or two): a smoke run

Runs every benchmark of bench/ — each server and each load generator in its own process, on
loopback only, for a bounded time — prints one table (every figure next to the limit of its
layer measured in the same run, the target, and the CPU share of the load generators, which shows
they were not the bottleneck) and writes it to bench/results.md with the date, the commit and the
machine. ``--json`` also writes every raw figure.

``BENCH_RPAD_ROOT=/path/to/other/checkout`` measures the rpad of another checkout with these same
benchmarks (how the "before" column of bench/README.md was made).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import console
import detect
import fanout
import fleet
import ingest
import latency
import memory
from common import BENCH_DIR, RPAD_ROOT

BENCHES = ("ingest", "fanout", "latency", "memory", "fleet", "detect", "console")


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, Linux "
            f"{platform.release()}, Python {platform.python_version()}")


def _commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %cd",
                              "--date=format:%Y-%m-%d %H:%M"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "rpad"],
                               capture_output=True, text=True).stdout.strip()
        return out + (" (+ uncommitted changes in rpad/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- the table ---------------------------------------------------------------------------------


def _f(x: float, digits: int = 0) -> str:
    if x != x:  # NaN
        return "–"
    return f"{x:,.{digits}f}"


def _pct(x: float) -> str:
    return "–" if x != x else f"{x:.0f} %"


def _signed(x: float) -> str:
    return f"{x:+.0%}".replace("-", "−")


def _met(ok: bool | None) -> str:
    return "–" if ok is None else ("yes" if ok else "**no**")


Row = tuple[str, str, str, str, str, str, str]


def rows(r: dict[str, Any]) -> list[Row]:
    """(measure, rpad, limit of its layer, ratio, target, met, load / notes)."""
    out: list[Row] = []
    if "ingest" in r:
        i = r["ingest"]
        ratio = i["single_ratio"]
        out.append((
            "1. Heartbeat over HTTP, 1 per request, keep-alive, 64 connections, group commit",
            f"{_f(i['single_rps'])} req/s, p50 {_f(i['single_p50_ms'], 1)} ms, "
            f"p99 {_f(i['single_p99_ms'], 1)} ms",
            f"trivial ASGI app, same Hypercorn-on-Trio: {_f(i['ceiling_rps'])} req/s, "
            f"p50 {_f(i['ceiling_p50_ms'], 1)} ms, p99 {_f(i['ceiling_p99_ms'], 1)} ms",
            f"{ratio:.0%} of the ceiling", "≥ 80 %", _met(ratio >= 0.80),
            f"wrk {_pct(i['single_wrk_cpu'])} / {_pct(i['ceiling_wrk_cpu'])} of a core; "
            f"servers {_pct(i['single_server_cpu'])} / {_pct(i['ceiling_server_cpu'])}; "
            f"{i['single_errors']} errors"))
        out.append((
            "2. Batch ingestion, 100 heartbeats per request, 16 connections",
            f"{_f(i['batch_hb_per_s'])} heartbeats/s, p50 {_f(i['batch_p50_ms'], 1)} ms, "
            f"p99 {_f(i['batch_p99_ms'], 1)} ms",
            f"durable: {i['batch_stored']:,} of {i['batch_clients']:,} clients in SQLite "
            "after the run", "–", "≥ 20,000 /s", _met(i["batch_hb_per_s"] >= 20_000),
            f"wrk {_pct(i['batch_wrk_cpu'])}; server {_pct(i['batch_server_cpu'])}; "
            f"{i['batch_errors']} errors"))
    if "fanout" in r:
        f = r["fanout"]
        for subs in sorted({v["subscribers"] for v in f.values()}):
            rp, tr = f.get(f"rpad/{subs}"), f.get(f"trio/{subs}")
            if rp and tr:
                overhead = rp["capacity"] / tr["capacity"]
                out.append((
                    f"3. Fan-out to {subs:,} subscribers",
                    f"{_f(rp['deliveries_per_second'])} deliveries/s "
                    f"({_f(rp['server_cpu_us_per_delivery'], 1)} µs CPU each)",
                    f"bare trio-websocket send loop: {_f(tr['deliveries_per_second'])} /s "
                    f"({_f(tr['server_cpu_us_per_delivery'], 1)} µs)",
                    f"{overhead:.2f}× the loop's capacity "
                    f"(overhead {_signed(1 / overhead - 1)})",
                    "overhead ≤ 10 %", _met(1 / overhead - 1 <= 0.10),
                    _fanout_note(rp, tr)))
            rb, ws = f.get(f"rpad-batch/{subs}"), f.get(f"websockets/{subs}")
            if rb and ws:
                ratio = rb["capacity"] / ws["capacity"]
                out.append((
                    f"3. Fan-out to {subs:,}, frame batching",
                    f"{_f(rb['deliveries_per_second'])} deliveries/s "
                    f"({_f(rb['server_cpu_us_per_delivery'], 1)} µs CPU each, "
                    f"{rb['expected'] / max(1, rb['frames']):.0f} per frame)",
                    f"websockets broadcast(): {_f(ws['deliveries_per_second'])} /s "
                    f"({_f(ws['server_cpu_us_per_delivery'], 1)} µs)",
                    f"{ratio:.2f}× broadcast()'s capacity", "≥ 2×", _met(ratio >= 2.0),
                    _fanout_note(rb, ws)))
    if "latency" in r:
        lat = r["latency"]
        for mode, label in (("plain", ""), ("batch", ", batching subscribers")):
            m = lat[mode]
            out.append((
                f"4. Latency, heartbeat accepted → event at {lat['subscribers']} subscribers, "
                f"{_f(m['rate'])} heartbeats/s{label}",
                f"p50 {_f(m['accepted_p50_ms'], 1)} ms, p99 {_f(m['accepted_p99_ms'], 1)} ms",
                f"request sent → received: p50 {_f(m['sent_p50_ms'], 1)} ms, "
                f"p99 {_f(m['sent_p99_ms'], 1)} ms", "–", "p99 < 25 ms",
                _met(m["accepted_p99_ms"] < 25.0) if mode == "plain" else "–",
                f"{m['deliveries']:,} of {m['expected']:,} delivered; server "
                f"{_pct(m['server_cpu'])}, subscribers {_pct(m['subscriber_cpu'])}"))
    if "memory" in r:
        m = r["memory"]
        out.append((
            f"5. Memory per idle authenticated WebSocket, {m['connections']:,} connections",
            f"{_f(m['rpad_kib'], 1)} KiB",
            f"bare trio-websocket server: {_f(m['trio_kib'], 1)} KiB",
            f"{m['rpad_kib'] / m['trio_kib']:.1f}×", "< 40 KiB", _met(m["rpad_kib"] < 40),
            f"rpad RSS {_f(m['rpad_rss_after_mib'])} MiB with them"))
    if "fleet" in r:
        fl = r["fleet"]
        for n in (1000, 10_000, 100_000):
            e = fl[f"server_list_{n}"]
            target = "< 40 ms" if n == 10_000 else "–"
            delta = f"; delta push {_f(e['delta_ms'], 1)} ms" if "delta_ms" in e else ""
            out.append((
                f"6. SERVER_LIST for {n:,} clients ({e['bytes'] / 2**20:.1f} MiB), build + "
                "serialize",
                f"per push {_f(e['steady_ms'], 1)} ms (1/15 changed); every client changed "
                f"{_f(e['cold_ms'], 1)} ms{delta}",
                f"stdlib json.dumps of the same views, prebuilt: {_f(e['stdlib_ms'], 1)} ms",
                "–", target, _met(e["steady_ms"] < 40) if n == 10_000 else "–",
                "in a worker process"))
        out.append((
            "6. Sweep over 100,000 online clients",
            f"nobody timed out {_f(fl['sweep_none_ms'], 3)} ms; 1 % timed out "
            f"{_f(fl['sweep_1pct_ms'], 1)} ms ({fl['sweep_1pct_events']:,} events)",
            "–", "–", "< 20 ms", _met(fl["sweep_none_ms"] < 20 and fl["sweep_1pct_ms"] < 20),
            "in a worker process"))
        st = fl["startup"]
        out.append((
            f"6. Start-up with {st['clients']:,} clients in the database",
            f"{_f(st['full_s'], 2)} s to listening",
            f"empty database: {_f(st['empty_s'], 2)} s", "–", "< 3 s", _met(st["full_s"] < 3),
            "exec of rpad serve → its 'listening' line"))
    if "detect" in r:
        d = r["detect"]
        out.append((
            f"9. Time to detect: a silent client's deadline → its CLIENT_DISCONNECTED, "
            f"{d['clients']:,} clients",
            f"p50 {_f(d['event_p50_ms'], 1)} ms, p99 {_f(d['event_p99_ms'], 1)} ms, "
            f"max {_f(d['event_max_ms'], 1)} ms",
            f"→ read by a dashboard: p50 {_f(d['dashboard_p50_ms'], 1)} ms, "
            f"p99 {_f(d['dashboard_p99_ms'], 1)} ms", "–", "< 100 ms",
            _met(d["event_p99_ms"] < 100), "deadlines spread over 20 s; timeout 30 s, "
            "check_interval 30 s"))
    if "console" in r:
        c, w, t = r["console"]["console"], r["console"]["wide"], r["console"]["tasks"]
        out.append((
            f"8. Console: round trip of `true` through the hub ({c['commands']:,} commands, "
            "one after another)",
            f"p50 {_f(c['rtt_p50_ms'], 1)} ms, p99 {_f(c['rtt_p99_ms'], 1)} ms",
            f"on the agent (sh -c true as its run-as user, the clean-up): p50 "
            f"{_f(c['agent_p50_ms'], 1)} ms", "–", "–", "–",
            "console → hub → audit (durable) → agent process → back"))
        out.append((
            f"8. Console: one command's output to one reader, {c['output_mib']} MiB of text",
            f"{_f(c['mib_per_s'], 1)} MiB/s (window {c['window_bytes'] // 1024} KiB, acks every "
            "50 ms: at most window / 50 ms)",
            f"window {w['window_bytes'] // 2**20} MiB: {_f(w['mib_per_s'], 1)} MiB/s", "–", "–",
            "–", f"rpad {_pct(c['rpad_cpu'])} / {_pct(w['rpad_cpu'])}, agent "
            f"{_pct(c['agent_cpu'])} / {_pct(w['agent_cpu'])} of a core"))
        all_at_once = t[f"c{t['agents']}"]
        some = [v for k, v in t.items() if k.startswith("c") and v is not all_at_once][0]
        out.append((
            f"8. A task over {t['agents']} simulated agents (`true`), POST → final TASK_UPDATE",
            f"all at once: {_f(all_at_once['seconds'] * 1000)} ms, rpad CPU "
            f"{_f(all_at_once['rpad_cpu_s'] * 1000)} ms",
            f"{some['concurrency']} at a time: {_f(some['seconds'] * 1000)} ms, rpad CPU "
            f"{_f(some['rpad_cpu_s'] * 1000)} ms", "–", "–", "–",
            "agents answer at once (bench/console_agents.py): rpad's side only"))
    return out


def _fanout_note(a: dict[str, Any], b: dict[str, Any]) -> str:
    return (f"servers {_pct(a['server_cpu'])} / {_pct(b['server_cpu'])} of a core; "
            f"subscriber processes {_pct(a['load_cpu'])} / {_pct(b['load_cpu'])}; "
            f"{a['delivered']:,}/{a['expected']:,} and {b['delivered']:,}/{b['expected']:,} "
            "delivered")


def table(r: dict[str, Any]) -> str:
    header = ("| measure | rpad | limit of its layer (same run) | ratio | target | met | "
              "load generators, CPU, checks |")
    lines = [header, "|" + "---|" * 7]
    for row in rows(r):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


# -- running -----------------------------------------------------------------------------------


def _run_one(name: str, quick: bool, work: Path) -> Any:
    runners: dict[str, Callable[[], Any]] = {
        "ingest": lambda: ingest.summarize(ingest.single(quick, work), ingest.batch(quick, work)),
        "fanout": lambda: _fanout(quick, work),
        "latency": lambda: latency.run(quick, work),
        "memory": lambda: memory.run(quick, work),
        "fleet": lambda: fleet.run(quick, work),
        "detect": lambda: {**detect.run(10_000 if quick else 100_000, 1 if quick else 3, 20.0),
                           "clients": 10_000 if quick else 100_000},
        "console": lambda: console.run(quick, work),
    }
    return runners[name]()


def _fanout(quick: bool, work: Path) -> dict[str, Any]:
    out = fanout.run(quick, [100, 1000], list(fanout.ALL_KINDS), work)
    for v in out.values():
        # Deliveries per second of the server's CPU: the figure the server would reach with a
        # core to itself (the load generators share the machine's other core).
        v["capacity"] = 1e6 / v["server_cpu_us_per_delivery"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark once, short")
    parser.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results.md",
                        help="where the table goes (default bench/results.md)")
    parser.add_argument("--json", type=Path, help="also write every raw figure here")
    args = parser.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rpad-bench-") as tmp:
        for name in args.only:
            print(f"[{time.monotonic() - t0:6.0f} s] {name} ...", file=sys.stderr, flush=True)
            work = Path(tmp) / name
            work.mkdir()
            results[name] = _run_one(name, args.quick, work)
    load_after = os.getloadavg()
    head = [
        f"# rpad benchmarks{' (--quick: single short runs, not figures)' if args.quick else ''}",
        "",
        f"- date: {started}; took {time.monotonic() - t0:.0f} s",
        f"- commit: {_commit(RPAD_ROOT)}",
        f"- machine: {_machine()}",
        f"- load average before / after: {', '.join(f'{x:.2f}' for x in load_before)} / "
        f"{', '.join(f'{x:.2f}' for x in load_after)}",
        "- figures: medians of "
        + ("1 run" if args.quick else "5 runs (memory: 3, in-process timings: 7)")
        + "; ratios from side-by-side runs; CPU shares are of one core",
        "",
    ]
    text = "\n".join(head) + "\n" + table(results) + "\n"
    print(text)
    args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
