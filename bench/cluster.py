"""Cluster mode (issue 11), measured: rpad on Redis next to rpad alone, side by side.

Starts its own redis-server (AOF, ``appendfsync always``: the durable configuration rpad
insists on) on a free loopback port, and rpad processes exactly as deployed
(``python -m rpad serve``). Prints one table:

1. **Heartbeat ingest, one node on Redis vs one node local** (SQLite): wrk, one heartbeat per
   request, 64 keep-alive connections, runs alternating local / redis; the ratio is the median
   of the side-by-side ratios. Also: **Redis round trips per heartbeat** at that load (rpad's
   own counter of round trips, every kind — heartbeats, publications, probes, lease — divided
   by the heartbeats accepted in the window).
2. **Two processes with SO_REUSEPORT vs one** (both on Redis, ``http.reuse_port``): wrk against
   the shared port, alternating one process / two processes.
3. **Heartbeat on node A → event at a subscriber on node B**: 300 heartbeats per second to A
   (open loop), 100 subscribers of ``heartbeat`` on B (bench/latency.py's machinery);
   p50/p99 from A's receipt of the heartbeat to B's subscriber reading it.
4. **Sweeper failover**: two nodes; ``kill -9`` of the lease holder; the time until the other
   node holds the sweep lease (polling /api/v1/health every 20 ms).

    python bench/cluster.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import latency
from common import ROOT, CpuWindow, Rpad, median, rpad_config
from ingest import SINGLE_CONNECTIONS, run_wrk

sys.path.insert(0, str(ROOT))
from tests.redisproc import RedisProcess  # noqa: E402

SECRET = "bench-cluster-secret-0123456789abcdef0123"


DURABILITY = "strict"


def _config(work: Path, name: str, redis: RedisProcess | None, **extra: Any) -> dict[str, Any]:
    secret = work / "jwt.secret"
    secret.write_text(SECRET)
    sections: dict[str, dict[str, Any]] = {"auth": {"secret_file": str(secret)}}
    if redis is not None:
        sections["cluster"] = {"backend": "redis", "redis_url": redis.url, "node_id": name,
                               "durability": DURABILITY}
    for k, v in extra.items():
        sections[k] = {**sections.get(k, {}), **v}
    return rpad_config(work / f"{name}-state", **sections)


def _metric(rpad: Rpad, name: str, token: str) -> float:
    req = urllib.request.Request(rpad.http_url + "/metrics",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(?:_total)?(\{{[^}}]*\}})? (\S+)$", text, re.M):
        if m.group(1) is None or 'result="accepted"' in m.group(1):
            total += float(m.group(2))
    return total


def ingest(quick: bool, work: Path, redis: RedisProcess) -> dict[str, Any]:
    runs = 1 if quick else 5
    seconds = 2.0 if quick else 8.0
    clients = 4000 if quick else 20000
    out: dict[str, list[Any]] = {"local": [], "redis": [], "round_trips_per_hb": []}
    with Rpad(work / "local", _config(work, "local", None)) as local, \
            Rpad(work / "redis", _config(work, "redis", redis)) as node:
        env = {"BENCH_TOKEN": local.token("service", "bench"), "BENCH_BATCH": "0",
               "BENCH_CLIENTS": str(clients)}
        admin = local.token("admin", "bench")
        for server in (local, node):  # warm-up: every id once
            run_wrk(server.http_url, seconds=max(2.0, clients / 2500),
                    connections=SINGLE_CONNECTIONS, env=env, cpu_pids=[])
        for _ in range(runs):
            out["local"].append(run_wrk(local.http_url, seconds=seconds,
                                        connections=SINGLE_CONNECTIONS, env=env,
                                        cpu_pids=[local.pid]))
            rt0 = _metric(node, "rpad_cluster_redis_round_trips", admin)
            hb0 = _metric(node, "rpad_heartbeats", admin)
            out["redis"].append(run_wrk(node.http_url, seconds=seconds,
                                        connections=SINGLE_CONNECTIONS, env=env,
                                        cpu_pids=[node.pid, redis.proc.pid]  # type: ignore[union-attr]
                                        ))
            rt1 = _metric(node, "rpad_cluster_redis_round_trips", admin)
            hb1 = _metric(node, "rpad_heartbeats", admin)
            out["round_trips_per_hb"].append((rt1 - rt0) / max(1.0, hb1 - hb0))
    return out


def reuse_port(quick: bool, work: Path, redis: RedisProcess) -> dict[str, Any]:
    runs = 1 if quick else 5
    seconds = 2.0 if quick else 8.0
    clients = 4000 if quick else 20000
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listen = {"http": {"listen": f"127.0.0.1:{port}", "reuse_port": True},
              "websocket": {"listen": "127.0.0.1:0", "reuse_port": True}}
    out: dict[str, list[Any]] = {"one": [], "two": []}
    url = f"http://127.0.0.1:{port}"
    with Rpad(work / "p1", _config(work, "p1", redis, **listen)) as p1:
        env = {"BENCH_TOKEN": p1.token("service", "bench"), "BENCH_BATCH": "0",
               "BENCH_CLIENTS": str(clients)}
        run_wrk(url, seconds=max(2.0, clients / 2500), connections=SINGLE_CONNECTIONS, env=env,
                cpu_pids=[])
        for _ in range(runs):
            out["one"].append(run_wrk(url, seconds=seconds, connections=SINGLE_CONNECTIONS,
                                      env=env, cpu_pids=[p1.pid]))
            with Rpad(work / "p2", _config(work, "p2", redis, **listen)) as p2:
                time.sleep(0.5)
                out["two"].append(run_wrk(url, seconds=seconds,
                                          connections=SINGLE_CONNECTIONS, env=env,
                                          cpu_pids=[p1.pid, p2.pid]))
    return out


def cross_node_latency(quick: bool, work: Path, redis: RedisProcess,
                       rate: float = 300.0) -> dict[str, Any]:
    runs = 1 if quick else 3
    seconds = 3.0 if quick else 8.0
    subscribers = 100
    ids = [f"x-{i:05d}" for i in range(int(rate * seconds))]
    ws = {"websocket": {"max_connections_per_user": 100_000}}
    rs: list[dict[str, Any]] = []
    with Rpad(work / "A", _config(work, "A", redis, **ws)) as a, \
            Rpad(work / "B", _config(work, "B", redis, **ws)) as b:
        sender = latency.HttpSender(a.http_url, a.token("service", "bench"))
        try:
            warm = latency.HttpSender(a.http_url, sender.token)
            items = []
            for i in range(0, len(ids), latency.REGISTER_BATCH):
                body = json.dumps({"heartbeats": [{"clientId": c} for c in
                                                  ids[i:i + latency.REGISTER_BATCH]]}).encode()
                items.append((f"batch-{i}", warm.request("/api/v1/client/heartbeats", body)))
            warm.run(items, 1000.0)
            warm.close()
            time.sleep(1.1)
            for r in range(runs):
                rs.append(latency.one_run(b, sender, ids, rate, subscribers, work, r, False))
                time.sleep(1.1)
        finally:
            sender.close()
    return {"runs": rs, "rate": rate}


def failover(quick: bool, work: Path, redis: RedisProcess) -> list[float]:
    times: list[float] = []
    for r in range(1 if quick else 3):
        nodes = [Rpad(work / f"f{r}{n}", _config(work, f"f{r}{n}", redis)) for n in "xy"]
        for n in nodes:
            n.__enter__()
        try:
            holder = ""
            while not holder:
                holder = _health(nodes[0])["cluster"]["sweepLeaseHolder"] or ""
                time.sleep(0.05)
            victim = next(n for n in nodes if n.config_path.parent.name == holder)
            other = next(n for n in nodes if n is not victim)
            victim.proc.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
            t0 = time.monotonic()
            while _health(other)["cluster"]["sweepLeaseHolder"] != other.config_path.parent.name:
                time.sleep(0.02)
            times.append(time.monotonic() - t0)
        finally:
            for n in nodes:
                n.__exit__(None, None, None)
    return times


def bytes_per_client(quick: bool, redis: RedisProcess) -> dict[str, Any]:
    """Redis memory per client: 10,000 agents (2,000 with --quick) beat once with a typical
    body (version, address, OS, interval, four metrics) through RedisPresence, and go online
    (one history entry each); used_memory before and after, divided."""
    import trio

    from rpad.backend.redis.keys import Keys
    from rpad.backend.redis.link import Link, RedisSettings
    from rpad.backend.redis.presence import RedisPresence
    from rpad.config import PresenceConfig
    from rpad.core.registry import Registry
    from rpad.core.validation import Heartbeat

    n = 2000 if quick else 10_000

    async def main() -> dict[str, Any]:
        link = Link(RedisSettings(redis.url, None, "mem", "mem"))
        reg = Registry(default_timeout_seconds=60, min_interval_seconds=0, auto_register=True)
        presence = RedisPresence(link, Keys("mem"), reg, PresenceConfig(), node_id="mem",
                                 wall_clock=time.time)
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            await nursery.start(presence.run)

            async def used() -> int:
                info = (await link.call("INFO", "memory")).decode()
                return int(re.search(r"used_memory:(\d+)", info).group(1))  # type: ignore[union-attr]

            before = await used()
            beats = [Heartbeat(f"robot-{i:07d}", version="1.4.2", ip_address="10.1.2.3",
                               os_type="linux", interval_seconds=30.0,
                               metrics={"cpuUsagePercent": 12.5, "memoryUsagePercent": 40.1,
                                        "diskUsagePercent": 70.0, "load1": 0.42})
                     for i in range(n)]
            for i in range(0, n, 500):
                await presence.heartbeats(beats[i:i + 500], time.time(), "127.0.0.1")
            after = await used()
            one = await link.call("MEMORY", "USAGE", Keys("mem").client("robot-0000001"))
            nursery.cancel_scope.cancel()
        return {"clients": n, "bytes_per_client": (after - before) / n, "hash_bytes": int(one)}

    return trio.run(main)


def _health(rpad: Rpad) -> dict[str, Any]:
    with urllib.request.urlopen(rpad.http_url + "/api/v1/health", timeout=10) as r:  # noqa: S310
        body: dict[str, Any] = json.loads(r.read())
        return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--appendfsync", default="always", choices=("always", "everysec"),
                        help="Redis's fsync policy (everysec: rpad runs with durability "
                             "relaxed; to see what the per-write fsync costs)")
    parser.add_argument("--rate", type=float, default=300.0,
                        help="heartbeats per second of the cross-node latency row")
    parser.add_argument("--only", nargs="*",
                        choices=("ingest", "reuse_port", "latency", "failover", "memory"))
    args = parser.parse_args()
    only = set(args.only or ("ingest", "reuse_port", "latency", "failover", "memory"))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rpad-bench-cluster-") as tmp:
        work = Path(tmp)
        global DURABILITY
        DURABILITY = "strict" if args.appendfsync == "always" else "relaxed"
        with RedisProcess(work / "redis", appendfsync=args.appendfsync) as redis:
            if "ingest" in only:
                results["ingest"] = ingest(args.quick, work, redis)
            if "reuse_port" in only:
                results["reuse_port"] = reuse_port(args.quick, work, redis)
            if "latency" in only:
                results["latency"] = cross_node_latency(args.quick, work, redis, args.rate)
            if "failover" in only:
                results["failover"] = failover(args.quick, work, redis)
            if "memory" in only:
                results["memory"] = bytes_per_client(args.quick, redis)
    print(table(results))
    (work_json := Path(tempfile.gettempdir()) / "rpad-bench-cluster.json").write_text(
        json.dumps(results, default=str, indent=1))
    print(f"(raw figures: {work_json})")


def table(res: dict[str, Any]) -> str:
    rows = ["| measure | figure | target |", "|---|---|---|"]
    if "ingest" in res:
        i = res["ingest"]
        loc = median([r["rps"] for r in i["local"]])
        red = median([r["rps"] for r in i["redis"]])
        ratio = median([b["rps"] / a["rps"] for a, b in zip(i["local"], i["redis"], strict=True)])
        errors = sum(r["errors"] for r in i["local"] + i["redis"])
        rows.append(f"| heartbeat ingest, one node on Redis vs one node local | {red:,.0f}/s vs "
                    f"{loc:,.0f}/s = {ratio:.0%} (p99 {median([r['p99_us'] for r in i['redis']]) / 1000:.1f} ms "
                    f"vs {median([r['p99_us'] for r in i['local']]) / 1000:.1f} ms; errors {errors}) | ≥ 70 % |")
        rows.append(f"| Redis round trips per heartbeat at that load | "
                    f"{median(i['round_trips_per_hb']):.3f} | ≤ 1 (grouped) |")
        cpu = [r["cpu"] for r in i["redis"]]
        rows.append("| CPU during the Redis runs (rpad / redis-server, % of a core) | "
                    + f"{median([list(c.values())[0] for c in cpu]):.0f} % / "
                    + f"{median([list(c.values())[1] for c in cpu]):.0f} % | |")
    if "reuse_port" in res:
        r = res["reuse_port"]
        one = median([x["rps"] for x in r["one"]])
        two = median([x["rps"] for x in r["two"]])
        ratio = median([b["rps"] / a["rps"] for a, b in zip(r["one"], r["two"], strict=True)])
        rows.append(f"| two processes with SO_REUSEPORT vs one (2 cores) | {two:,.0f}/s vs "
                    f"{one:,.0f}/s = {ratio:.2f}× | ≥ 1.6× |")
    if "latency" in res:
        runs = res["latency"]["runs"]
        p50 = median([x["accepted_p50_ms"] for x in runs])
        p99 = median([x["accepted_p99_ms"] for x in runs])
        got = sum(x["deliveries"] for x in runs)
        want = sum(x["expected"] for x in runs)
        rows.append(f"| heartbeat on A → event at a subscriber on B, "
                    f"{res['latency']['rate']:.0f}/s, 100 subscribers | "
                    f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({got}/{want} delivered) | p99 < 30 ms |")
    if "failover" in res:
        f = res["failover"]
        rows.append(f"| sweeper failover (kill -9 of the lease holder → the other holds it) | "
                    f"median {median(f):.1f} s (runs: {', '.join(f'{x:.1f}' for x in f)}) | "
                    f"measured |")
    if "memory" in res:
        m = res["memory"]
        rows.append(f"| Redis memory per client ({m['clients']:,} clients, typical heartbeat) | "
                    f"{m['bytes_per_client']:,.0f} bytes (the hash alone: {m['hash_bytes']} "
                    f"bytes) | – |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
