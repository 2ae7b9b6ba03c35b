"""Issue 13's figures: metrics history on disk and its 24 h query, and the windowed fleet view.

- **History storage per client per day**: N clients beat every 30 s with the 11 metrics of
  the reference agent for one simulated day, through the real path (``LocalHistory.record``
  staged in the store's group commit, buckets closed at every minute boundary, pruning every
  minute with the default retentions); the database's used pages (page_count - freelist,
  after a checkpoint) divided by N. Also the same after the retentions are full (8 days of
  15-minute rows and 31 days of hourly rows, written directly): the steady state.
- **24 h at 1-minute step for one client, 10,000 clients in the database**: 10,000 clients
  each with 25 h of 1-minute buckets (what the default retention keeps); the query of the
  HTTP route for one random client (``ClientHistory.metrics``: the tier plan, the read, the
  re-bucketing and the JSON of the answer), cold (first read of that client) and warm.
- **Windowed push at 100,000 clients**: a registry of 100,000 clients; each tick 1/15 of
  them beat (a fleet beating every 30 s, pushes every 2 s); then the engine's shared refresh
  and, per distinct view, its page, its change signature and its serialized SERVER_WINDOW
  envelope. Views: the dashboard's default (status, 50 rows), online by CPU descending, a
  search matching 1 %, page 1,000 by name (offset 50,000), most recent heartbeat first.

    python bench/history_window.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RPAD_ROOT, median

sys.path.insert(0, str(RPAD_ROOT))

import trio  # noqa: E402

from rpad.backend.local.history import LocalHistory  # noqa: E402
from rpad.backend.local.store import Store  # noqa: E402
from rpad.config import HistoryConfig  # noqa: E402
from rpad.core.history import Downsampler, pack_rollup  # noqa: E402
from rpad.core.jsonenc import dumps  # noqa: E402
from rpad.core.registry import Registry  # noqa: E402
from rpad.core.validation import Heartbeat  # noqa: E402
from rpad.core.window import View, WindowEngine  # noqa: E402
from rpad.hub.windows import WindowPusher  # noqa: E402

T0 = 1_767_225_600.0
GIB = 1024 ** 3


def agent_metrics(rng: random.Random) -> dict[str, float]:
    return {"cpuUsagePercent": round(rng.uniform(0, 100), 2),
            "memoryUsageBytes": float(rng.randrange(GIB, 7 * GIB)),
            "memoryTotalBytes": float(8 * GIB),
            "diskUsageBytes": float(rng.randrange(50 * GIB, 60 * GIB)),
            "diskTotalBytes": float(256 * GIB),
            "networkRxInstantBps": float(rng.randrange(0, 10**7)),
            "networkTxInstantBps": float(rng.randrange(0, 10**7)),
            "uptimeSeconds": float(rng.randrange(10**6)),
            "load1": round(rng.uniform(0, 4), 2), "load5": round(rng.uniform(0, 4), 2),
            "load15": round(rng.uniform(0, 4), 2)}


def used_bytes(path: Path) -> int:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = db.execute("PRAGMA page_size").fetchone()[0]
        count = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
    return int((count - free) * page)


def table_bytes(path: Path) -> dict[str, int]:
    """Bytes of each table and index (dbstat), when SQLite has it."""
    try:
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
    except sqlite3.Error:
        return {}
    return {name: int(size) for name, size in rows}


# -- history storage -----------------------------------------------------------------------------


async def simulate_day(path: Path, clients: int, hours: float) -> dict[str, Any]:
    now = [T0]
    store = Store(path, commit_interval_ms=0)
    loaded = await trio.to_thread.run_sync(store.open)
    history = LocalHistory(store, HistoryConfig(), meta=loaded.meta,
                           wall_clock=lambda: now[0], grace_until=0.0)
    rng = random.Random(1)
    ids = [f"robot-{i:05d}" for i in range(clients)]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_committer)
        history.store.stage_rows("rpad_runs", [("start", T0, 0.0)])
        await history._recover()
        ticks = int(hours * 3600 / 30)
        for tick in range(ticks):
            now[0] = T0 + tick * 30
            for cid in ids:  # one heartbeat each, spread over the tick
                history.record(cid, now[0] + rng.random() * 29, agent_metrics(rng))
            await store.durable()
            if tick % 2 == 1:  # a minute boundary: close, and prune as the task does
                now[0] = T0 + (tick + 1) * 30
                await history._close(now[0])
                history._stage_prune(now[0])
                await store.durable()
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(store.close)
    return {"used": used_bytes(path), "tables": table_bytes(path)}


def steady_state(path: Path, clients: int) -> dict[str, Any]:
    """Add to a database the 15-minute (8 d) and hourly (31 d) rows of a full retention."""
    rng = random.Random(2)
    rows = []
    for step, count in ((900, 8 * 96), (3600, 31 * 24)):
        for i in range(clients):
            d = Downsampler([step])
            start = int(T0) - (count + 30) * step
            for k in range(count):
                for _ in range(2 if step == 60 else 4):
                    d.add(f"robot-{i:05d}", start + k * step + rng.random() * step,
                          agent_metrics(rng))
            rows.extend((r.client_id, r.step, r.start, pack_rollup(r.acc))
                        for r in d.close(start + count * step))
    with sqlite3.connect(path) as db:
        db.executemany("INSERT OR REPLACE INTO metric_rollups VALUES (?, ?, ?, ?)", rows)
    return {"used": used_bytes(path), "tables": table_bytes(path)}


# -- the 24 h query ------------------------------------------------------------------------------


def build_query_db(path: Path, clients: int, hours: int) -> None:
    store = Store(path)
    store.open()
    store.close()
    rng = random.Random(3)
    blobs = []
    for _ in range(64):  # a few distinct buckets, reused (their content does not matter here)
        d = Downsampler([60])
        d.add("x", T0, agent_metrics(rng))
        d.add("x", T0 + 30, agent_metrics(rng))
        blobs.append(pack_rollup(d.close(T0 + 60)[0].acc))
    end = int(T0) - int(T0) % 60
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        # Minute by minute for every client, as the daemon writes them (interleaved clients).
        batch: list[tuple[str, int, int, bytes]] = []
        for m in range(hours * 60):
            start = end - (hours * 60 - m) * 60
            for i in range(clients):
                batch.append((f"robot-{i:05d}", 60, start, blobs[(i + m) % 64]))
            if len(batch) >= 200_000:
                db.executemany("INSERT INTO metric_rollups VALUES (?, ?, ?, ?)", batch)
                batch.clear()
        db.executemany("INSERT INTO metric_rollups VALUES (?, ?, ?, ?)", batch)
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def time_queries(path: Path, clients: int, runs: int) -> dict[str, float]:
    from rpad.service.client_history import ClientHistory

    end = T0 - T0 % 60
    store = Store(path)
    loaded = await trio.to_thread.run_sync(store.open)
    history = LocalHistory(store, HistoryConfig(), meta=loaded.meta,
                           wall_clock=lambda: end, grace_until=0.0)
    service = ClientHistory(None, history, wall_clock=lambda: end)  # type: ignore[arg-type]
    rng = random.Random(4)
    cold, warm, sizes, points = [], [], [], 0
    for _ in range(runs):
        cid = f"robot-{rng.randrange(clients):05d}"
        for bucket in (cold, warm):
            t = time.perf_counter()
            body = await service.metrics(cid, end - 86400, end, 60, [
                "cpuUsagePercent", "memoryUsageBytes", "memoryTotalBytes", "diskUsageBytes",
                "diskTotalBytes", "networkRxInstantBps", "networkTxInstantBps", "load1",
                "load5", "load15"])
            text = dumps(body)
            bucket.append((time.perf_counter() - t) * 1000)
        sizes.append(len(text))
        points = sum(1 for n in body["count"] if n)
    await trio.to_thread.run_sync(store.close)
    return {"cold_ms": median(cold), "warm_ms": median(warm), "bytes": median(sizes),
            "points": points}


# -- the windowed view ---------------------------------------------------------------------------


class _Outbox:
    def offer_latest(self, key: str, text: str) -> bool:
        return False


class _Conn:
    def __init__(self) -> None:
        self.outbox = _Outbox()
        self.topics: set[str] = set()


def window_bench(clients: int, ticks: int) -> dict[str, Any]:
    from rpad.hub.codes import HubCounters
    from rpad.hub.fanout import Fanout

    rng = random.Random(5)
    reg = Registry(default_timeout_seconds=60, min_interval_seconds=0, auto_register=True)
    ids = [f"robot-{i:06d}" for i in range(clients)]
    now = T0
    for i, cid in enumerate(ids):
        reg.heartbeat(Heartbeat(client_id=cid, name=f"Robot {i}", version=f"1.{i % 7}",
                                ip_address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                                metrics=agent_metrics(rng)), now)
    views = {
        "default (status, 50 rows)": View(limit=50),
        "online, CPU descending": View(filter="online", sort="cpu", desc=True, limit=50),
        "search matching 1 %": View(q="robot 12", sort="name", limit=50),
        "page 1,000 by name": View(sort="name", offset=50_000, limit=50),
        "latest heartbeat first": View(sort="heartbeat", desc=True, limit=50),
    }
    fanout = Fanout(HubCounters(), wall_clock=lambda: now)
    fanout.register_state_topic("servers", "SERVER_LIST", reg.servers_json)
    pusher = WindowPusher(fanout, reg, lambda: 2.0)
    engine = pusher._engine()
    for v in views.values():
        engine.window(v)  # build the indexes the views use
    refresh_ms: list[float] = []
    per_view: dict[str, list[float]] = {name: [] for name in views}
    sizes: dict[str, list[int]] = {name: [] for name in views}
    steady = max(1, clients // 15)
    for _ in range(ticks):
        now += 2.0
        for cid in rng.sample(ids, steady):
            reg.heartbeat(Heartbeat(client_id=cid, metrics=agent_metrics(rng)), now)
        t = time.perf_counter()
        engine.refresh()
        refresh_ms.append((time.perf_counter() - t) * 1000)
        for name, v in views.items():
            t = time.perf_counter()
            w = engine.window(v)
            pusher._signature(w)
            text = pusher._text(v, w)
            per_view[name].append((time.perf_counter() - t) * 1000)
            sizes[name].append(len(text.encode()))
    return {"refresh_ms": median(refresh_ms), "changed_per_tick": steady,
            "views": {name: {"ms": median(per_view[name]), "bytes": median(sizes[name])}
                      for name in views}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    q = args.quick
    with tempfile.TemporaryDirectory(prefix="rpad-bench-history-") as tmp:
        n = 20 if q else 200
        path = Path(tmp) / "day.db"
        day = trio.run(simulate_day, path, n, 2 if q else 24)
        print(f"history, {n} clients beating every 30 s for {'2 h' if q else '1 day'}: "
              f"{day['used'] / n / 1024:.1f} KiB per client on disk")
        for name, size in sorted(day["tables"].items()):
            if size > 65536:
                print(f"    {name}: {size / n / 1024:.1f} KiB per client")
        full = steady_state(path, n)
        print(f"history when every retention is full (raw 1 h, 1 min 25 h, 15 min 8 d, "
              f"1 h 31 d): {full['used'] / n / 1024:.1f} KiB per client")
        qn = 500 if q else 10_000
        qpath = Path(tmp) / "query.db"
        t = time.perf_counter()
        build_query_db(qpath, qn, 25)
        print(f"(built {qn} clients x 25 h of 1-minute buckets in "
              f"{time.perf_counter() - t:.0f} s, {os.path.getsize(qpath) / 2**20:.0f} MiB)")
        res = trio.run(time_queries, qpath, qn, 7)
        print(f"24 h at 1-minute step, one client of {qn}: cold {res['cold_ms']:.1f} ms, "
              f"warm {res['warm_ms']:.1f} ms (median of 7; {res['points']} points, "
              f"{res['bytes'] / 1024:.0f} KiB of JSON)")
    wn = 10_000 if q else 100_000
    res = window_bench(wn, 5 if q else 15)
    print(f"windowed push at {wn} clients: shared refresh {res['refresh_ms']:.1f} ms per tick "
          f"({res['changed_per_tick']} clients changed)")
    for name, r in res["views"].items():
        print(f"    {name}: {r['ms']:.2f} ms build + serialize, {r['bytes'] / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
