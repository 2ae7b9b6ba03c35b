"""Metrics history in SQLite (rpad/backend/local/history.py) on Trio's fake clock, moved by
hand: buckets stored just after their boundary with exact values, a crash's open buckets
rebuilt from the samples on disk, pruning that keeps the database bounded, rpad's runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rpad.backend.local import history as history_mod
from rpad.backend.local.history import LocalHistory
from rpad.backend.local.store import Store
from rpad.config import HistoryConfig
from rpad.core.history import Plan, acc_stats, unpack_rollup

from .conftest import FAKE_WALL_ORIGIN, fake_wall_clock

CPU = "cpuUsagePercent"


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock()  # only the test moves it


async def settle(store: Store) -> None:
    for _ in range(3):
        await trio.testing.wait_all_tasks_blocked()
        await store.durable()


async def advance_to(clock: trio.testing.MockClock, store: Store, t: float,
                     step: float = 1.0) -> None:
    await settle(store)
    while trio.current_time() < t:
        clock.jump(min(step, t - trio.current_time()))
        await settle(store)


async def open_history(path: Path, nursery: trio.Nursery, cfg: HistoryConfig | None = None,
                       grace_until: float = 0.0) -> tuple[Store, LocalHistory, trio.CancelScope]:
    store = Store(path, commit_interval_ms=0)
    loaded = await trio.to_thread.run_sync(store.open)
    history = LocalHistory(store, cfg or HistoryConfig(), meta=loaded.meta,
                           wall_clock=fake_wall_clock(), grace_until=grace_until)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            async with trio.open_nursery() as inner:
                await inner.start(store.run_committer)
                await inner.start(history.run)
                task_status.started()

    await nursery.start(run)
    await history.recovered.wait()
    return store, history, scope


def rollups(path: Path, step: int) -> dict[float, dict[str, Any]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT start, v FROM metric_rollups WHERE client_id = 'a' AND "
                          "step = ? ORDER BY start", (step,)).fetchall()
    return {start - FAKE_WALL_ORIGIN: acc_stats(unpack_rollup(v)) for start, v in rows}


def count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as db:
        n: int = db.execute(sql).fetchone()[0]
    return n


async def test_buckets_are_stored_just_after_their_boundary(
        clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "rpad.db"
    store, history, scope = await open_history(path, nursery)
    wall = fake_wall_clock()
    for t, cpu in ((0, 10.0), (30, 20.0), (59.5, 30.0)):
        await advance_to(clock, store, t, 0.5)
        history.record("a", wall(), {CPU: cpu})
    assert rollups(path, 60) == {}
    await advance_to(clock, store, 60, 0.5)
    assert rollups(path, 60) == {0: {CPU: (3, 10.0, 20.0, 30.0)}}
    for t, cpu in ((60, 40.0), (90, 50.0)):
        await advance_to(clock, store, t, 0.5)
        history.record("a", wall(), {CPU: cpu})
    await advance_to(clock, store, 120, 0.5)
    assert rollups(path, 60) == {0: {CPU: (3, 10.0, 20.0, 30.0)},
                                 60: {CPU: (2, 40.0, 45.0, 50.0)}}
    assert rollups(path, 900) == {}
    # The query includes the buckets still open (the 15-minute one here).
    series = await history.query("a", Plan(900, int(FAKE_WALL_ORIGIN), 900, 1), [CPU])
    assert series.count == [5] and series.stats[CPU] == ([10.0], [30.0], [50.0])
    await advance_to(clock, store, 900, 30)
    assert rollups(path, 900) == {0: {CPU: (5, 10.0, 30.0, 50.0)}}
    # Raw samples, exactly as recorded.
    series = await history.query("a", Plan(0, int(FAKE_WALL_ORIGIN), 30, 4), [CPU])
    assert series.count == [1, 2, 1, 1]
    assert series.stats[CPU][1] == [10.0, 25.0, 40.0, 50.0]
    scope.cancel()


async def test_a_crash_loses_no_sample_of_an_open_bucket(
        clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "rpad.db"
    store, history, scope = await open_history(path, nursery)
    wall = fake_wall_clock()
    for t in range(0, 600, 30):  # 20 samples, cpu 0..19, in the first 10 minutes
        await advance_to(clock, store, t, 5)
        history.record("a", wall(), {CPU: float(t // 30)})
    await settle(store)
    # kill -9: the process is gone; what was committed stays, nothing else is written.
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert store._db is not None and store._reader is not None
    store._db.close()
    store._reader.close()
    assert rollups(path, 900) == {}
    clock.jump(1200 - trio.current_time())  # rpad is down meanwhile: no bucket closes
    store, history, scope = await open_history(path, nursery)
    await advance_to(clock, store, 1200 + 1, 0.5)
    # The 15-minute bucket [0, 900) was replayed from the samples and closed.
    assert rollups(path, 900) == {0: {CPU: (20, 0.0, 9.5, 19.0)}}
    assert len(rollups(path, 60)) == 10
    await advance_to(clock, store, 3600, 60)
    assert rollups(path, 3600) == {0: {CPU: (20, 0.0, 9.5, 19.0)}}
    scope.cancel()


async def test_pruning_keeps_the_database_bounded(
        clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """20 clients beating every 30 s for 6 hours with short retentions: every table holds at
    most what its retention allows, and the database stops growing once the retentions are
    full (deleted pages are reused)."""
    monkeypatch.setattr(history_mod, "PRUNE_CHUNK_ROWS", 50)  # several steps per prune
    cfg = HistoryConfig(raw_retention_hours=0.25, minute_retention_hours=0.5,
                        quarter_hour_retention_days=1 / 24, hour_retention_days=2 / 24,
                        prune_interval_seconds=60)
    path = tmp_path / "rpad.db"
    store, history, scope = await open_history(path, nursery, cfg)
    wall = fake_wall_clock()
    clients = [f"c{i}" for i in range(20)]
    sizes: list[int] = []
    for tick in range(6 * 120):
        await advance_to(clock, store, tick * 30, 30)
        for cid in clients:
            history.record(cid, wall(), {CPU: float(tick % 100), "load1": 1.0})
        if tick % 120 == 119:
            await advance_to(clock, store, tick * 30 + 20, 10)  # a prune round
            n = len(clients)
            # Raw samples are kept back to the start of the oldest open bucket (the hour's:
            # a restart replays them), and for their retention; plus one prune interval.
            assert count(path, "SELECT count(*) FROM metric_samples") <= n * (120 + 2 + 2)
            for step, kept in ((60, 1800), (900, 3600), (3600, 7200)):
                rows = count(path, f"SELECT count(*) FROM metric_rollups WHERE step = {step}")
                assert rows <= n * (kept // step + 2), (step, rows)
            with sqlite3.connect(path) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                pages = db.execute("PRAGMA page_count").fetchone()[0]
            sizes.append(pages)
    # Hours 3 to 6: the retentions are full; the file does not keep growing.
    assert max(sizes[2:]) <= sizes[2] * 1.15, sizes
    assert history.rows_pruned > 0
    scope.cancel()


async def test_runs_record_starts_alive_marks_and_clean_stops(
        clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "rpad.db"
    store, history, scope = await open_history(path, nursery, grace_until=FAKE_WALL_ORIGIN + 60)
    await advance_to(clock, store, 100, 5)
    runs = await history.runs(0)
    assert [(r.started_at, r.stopped_at, r.grace_until) for r in runs] == [
        (FAKE_WALL_ORIGIN, None, FAKE_WALL_ORIGIN + 60)]
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    await trio.to_thread.run_sync(store.close)
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT started_at, alive_at, stopped_at FROM rpad_runs").fetchone()
    assert row == (FAKE_WALL_ORIGIN, FAKE_WALL_ORIGIN + 100, FAKE_WALL_ORIGIN + 100)
    # A crashed run keeps its last alive mark (every ALIVE_INTERVAL_SECONDS).
    await advance_to(clock, store, 500, 50)
    store, history, scope = await open_history(path, nursery)
    await advance_to(clock, store, 540, 5)
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert store._db is not None and store._reader is not None
    store._db.close()
    store._reader.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT started_at - ?, alive_at - ?, stopped_at FROM rpad_runs "
                          "ORDER BY started_at", (FAKE_WALL_ORIGIN, FAKE_WALL_ORIGIN)).fetchall()
    assert rows == [(0.0, 100.0, FAKE_WALL_ORIGIN + 100), (500.0, 530.0, None)]


