"""Metrics history and rpad's runs in SQLite: :class:`~rpad.backend.base.MetricsHistory` for
one node.

Tables (schema version 2 of :mod:`rpad.backend.local.store`): ``metric_samples`` (one row per
heartbeat with metrics: client, receive time, the values as sent, packed), ``metric_rollups``
(one row per closed bucket: client, tier step, start, count/min/avg/max packed) and
``rpad_runs``. Keys are (client, time), so one client's range is one contiguous stretch of
the table's B-tree; secondary indexes by time serve the pruning.

Writes. A heartbeat's sample is staged with the heartbeat (:meth:`LocalHistory.record`, called
by :class:`~rpad.backend.local.presence.LocalPresence`) and shares its group commit: no fsync
of its own. The open buckets of every tier live in a :class:`~rpad.core.history.Downsampler`;
:meth:`LocalHistory.run` closes them at each minute boundary (a heartbeat is stamped and
staged without a checkpoint in between, so every sample of a bucket is staged by its end) and
stages them in steps
of :data:`CLOSE_CHUNK_ROWS` rows (each its own group commit, so a large fleet's boundary does not
hold the heartbeats' commits for long), then the tiers' *watermarks* (``meta``: every bucket
ending at or before it is stored). It prunes what expired every
``history.prune_interval_seconds``, :data:`PRUNE_CHUNK_ROWS` rows per commit, and marks this run
alive every :data:`ALIVE_INTERVAL_SECONDS`.

Crash safety. Nothing acknowledged is lost: after a ``kill -9`` the samples are on disk and
the open buckets are rebuilt by replaying the samples since the oldest watermark (samples are
never pruned past it), in a worker thread after start-up; buckets close only once that replay
is merged. A bucket written twice (a crash between two steps of a boundary) is written with the
same values (``INSERT OR REPLACE`` of a bucket recomputed from the same samples).

Disk use is bounded by the retentions: per client, one sample per heartbeat for
``raw_retention_hours`` plus one row per tier step for its retention (see the README).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ...config import HistoryConfig
from ...core.errors import StorageUnavailable
from ...core.history import (
    ROLLUP_STEPS,
    Downsampler,
    Grid,
    Plan,
    Rollup,
    Series,
    pack_rollup,
    pack_sample,
    unpack_rollup,
    unpack_sample,
)
from ..base import Run
from .store import Store

log = logging.getLogger(__name__)

# Closed buckets staged per group commit, and expired rows deleted per commit.
CLOSE_CHUNK_ROWS = 2000
PRUNE_CHUNK_ROWS = 5000
# How often this run's row says it is alive (the precision of rpad's downtime after a crash).
ALIVE_INTERVAL_SECONDS = 15.0
# rpad's runs are kept this long (availability looks back 30 days).
RUNS_KEEP_SECONDS = 40 * 86400.0
_WATERMARK = "history.closed_through.{}"


class LocalHistory:
    """:class:`~rpad.backend.base.MetricsHistory` in the local store."""

    def __init__(self, store: Store, cfg: HistoryConfig, *, meta: dict[str, str],
                 wall_clock: Callable[[], float], grace_until: float) -> None:
        self.store = store
        self.cfg = cfg
        self.wall_clock = wall_clock
        self.grace_until = grace_until
        self.started_at = wall_clock()
        self.alive_at = self.started_at
        self.down = Downsampler(ROLLUP_STEPS)
        self._watermarks: dict[int, float] = {}
        for step in ROLLUP_STEPS:
            raw = meta.get(_WATERMARK.format(step))
            mark = float(raw) if raw is not None else -math.inf
            self._watermarks[step] = mark
            self.down.closed_through[step] = mark
        # Set once the samples of buckets left open by the previous run are replayed.
        self.recovered = trio.Event()
        self._prune_more = False
        # Counters (GET /metrics could show them).
        self.samples_recorded = 0
        self.buckets_closed = 0
        self.rows_pruned = 0
        store.add_writer("metric_samples", _write_samples)
        store.add_writer("metric_rollups", _write_rollups)
        store.add_writer("rpad_runs", _write_runs)
        store.add_writer("history_prune", self._write_prune)

    # -- writes --------------------------------------------------------------------------------

    def record(self, client_id: str, at: float, metrics: dict[str, float]) -> None:
        if not self.cfg.enabled or not metrics:
            return
        self.store.stage_rows("metric_samples", [(client_id, at, pack_sample(metrics))])
        self.down.add(client_id, at, metrics)
        self.samples_recorded += 1

    def forget(self, client_id: str) -> None:
        self.down.forget(client_id)

    def reconfigure(self, cfg: HistoryConfig) -> None:
        self.cfg = cfg

    def retention(self) -> dict[int, float]:
        return self.cfg.retention_seconds()

    # -- the periodic work ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Record this run, replay what the previous one left open, then close buckets after
        every minute boundary, prune and mark alive, until cancelled; a cancellation (a clean
        stop) stages this run's end, which the store's final commit writes."""
        self.store.stage_rows("rpad_runs", [("start", self.started_at, self.grace_until)])
        task_status.started()
        try:
            await self._recover()
            next_prune = next_alive = trio.current_time()
            while True:
                now = self.wall_clock()
                await self._close(now)
                t = trio.current_time()
                if t >= next_alive:
                    self.alive_at = now
                    self.store.stage_rows("rpad_runs", [("alive", self.started_at, now)])
                    next_alive = t + ALIVE_INTERVAL_SECONDS
                if t >= next_prune or self._prune_more:
                    self._stage_prune(now)
                    await self._committed()
                    next_prune = t + self.cfg.prune_interval_seconds
                    if self._prune_more:
                        continue
                # Sleep to the next minute boundary, alive mark or prune.
                boundary = (math.floor(now / ROLLUP_STEPS[0]) + 1) * ROLLUP_STEPS[0]
                wake = min(boundary - now, next_alive - t, next_prune - t)
                await trio.sleep(max(0.0, wake))
        finally:
            with contextlib.suppress(StorageUnavailable):  # the store is closed already
                self.store.stage_rows("rpad_runs", [("stop", self.started_at,
                                                     self.wall_clock())])

    async def _committed(self) -> None:
        """Wait for the commit of what was staged; a failure is the store's to retry (it
        keeps the rows and logs), not this task's to crash on."""
        with contextlib.suppress(StorageUnavailable):
            await self.store.durable()

    async def _recover(self) -> None:
        """Replay the samples of buckets the previous run did not close (none on a first
        start) into the open buckets."""
        since = min(self._watermarks.values())
        until = self.started_at

        def read(db: sqlite3.Connection) -> Downsampler:
            replay = Downsampler(ROLLUP_STEPS)
            replay.closed_through.update(self._watermarks)
            rows = db.execute("SELECT client_id, at, v FROM metric_samples "
                              "WHERE at >= ? AND at < ?", (since, until))
            for cid, at, blob in rows:
                replay.add(cid, at, unpack_sample(blob))
            return replay

        replay = await self.store.read(read)
        self.down.merge(replay)
        n = replay.open_count()
        if n:
            log.info("metrics history: replayed the open buckets of the previous run (%d)", n)
        self.recovered.set()

    async def _close(self, now: float) -> None:
        """Stage every bucket that ended before ``now`` (in steps), then the watermarks."""
        rollups = self.down.close(now)
        for i in range(0, len(rollups), CLOSE_CHUNK_ROWS):
            chunk = rollups[i:i + CLOSE_CHUNK_ROWS]
            self.store.stage_rows("metric_rollups", [_rollup_row(r) for r in chunk])
            self.buckets_closed += len(chunk)
            if i + CLOSE_CHUNK_ROWS < len(rollups):
                await self._committed()
        for step, mark in self.down.closed_through.items():
            if mark > self._watermarks[step]:
                self._watermarks[step] = mark
                self.store.set_meta(_WATERMARK.format(step), repr(mark))
        if rollups:
            await self._committed()

    def _stage_prune(self, now: float) -> None:
        retention = self.cfg.retention_seconds()
        # Samples of buckets still open are kept whatever the retention (a restart replays
        # them).
        oldest_open = min(self._watermarks.values())
        raw_cut = min(now - retention[0], oldest_open)
        cuts = {step: now - retention[step] for step in ROLLUP_STEPS}
        self._prune_more = False
        self.store.stage_rows("history_prune", [(raw_cut, cuts, now - RUNS_KEEP_SECONDS)])

    def _write_prune(self, db: sqlite3.Connection, rows: list[Any]) -> None:
        """Delete at most PRUNE_CHUNK_ROWS expired rows per table (in the commit's thread)."""
        raw_cut, cuts, runs_cut = rows[-1]
        more = False
        n = _delete_before(db, "metric_samples", "at", raw_cut, "", ())
        more |= n >= PRUNE_CHUNK_ROWS
        pruned = n
        for step, cut in cuts.items():
            n = _delete_before(db, "metric_rollups", "start", cut, "step = ? AND ", (step,))
            more |= n >= PRUNE_CHUNK_ROWS
            pruned += n
        db.execute("DELETE FROM rpad_runs WHERE alive_at < ?", (runs_cut,))
        self.rows_pruned += pruned
        self._prune_more = more

    # -- reads ---------------------------------------------------------------------------------

    async def query(self, client_id: str, plan: Plan, names: Sequence[str]) -> Series:
        end = plan.start + plan.step * plan.n
        grid = Grid(plan.start, plan.step, plan.n)
        if plan.tier == 0:
            def read_samples(db: sqlite3.Connection) -> list[tuple[float, bytes]]:
                return db.execute("SELECT at, v FROM metric_samples WHERE client_id = ? AND "
                                  "at >= ? AND at < ?", (client_id, plan.start, end)).fetchall()

            for at, blob in await self.store.read(read_samples):
                grid.add_sample(at, unpack_sample(blob))
        else:
            def read_rollups(db: sqlite3.Connection) -> list[tuple[int, bytes]]:
                return db.execute("SELECT start, v FROM metric_rollups WHERE client_id = ? AND "
                                  "step = ? AND start >= ? AND start < ?",
                                  (client_id, plan.tier, plan.start, end)).fetchall()

            stored = await self.store.read(read_rollups)
            seen = set()
            for start, blob in stored:
                grid.add_bucket(start, unpack_rollup(blob))
                seen.add(start)
            for start, acc in self.down.open_buckets(client_id, plan.tier):
                if start not in seen:  # closed and stored while the read ran: counted once
                    grid.add_bucket(start, array("d", acc))
        return grid.series(names)

    async def runs(self, since: float) -> list[Run]:
        def read(db: sqlite3.Connection) -> list[tuple[float, float, float | None, float]]:
            return db.execute("SELECT started_at, alive_at, stopped_at, grace_until FROM "
                              "rpad_runs WHERE alive_at >= ? OR started_at = ? "
                              "ORDER BY started_at", (since, self.started_at)).fetchall()

        out = [Run(*row) for row in await self.store.read(read)
               if row[0] != self.started_at]
        out.append(Run(self.started_at, self.wall_clock(), None, self.grace_until))
        return out


def _rollup_row(r: Rollup) -> tuple[str, int, int, bytes]:
    return (r.client_id, r.step, r.start, pack_rollup(r.acc))


def _write_samples(db: sqlite3.Connection, rows: list[Any]) -> None:
    db.executemany("INSERT OR REPLACE INTO metric_samples (client_id, at, v) VALUES (?, ?, ?)",
                   rows)


def _write_rollups(db: sqlite3.Connection, rows: list[Any]) -> None:
    db.executemany("INSERT OR REPLACE INTO metric_rollups (client_id, step, start, v) "
                   "VALUES (?, ?, ?, ?)", rows)


def _write_runs(db: sqlite3.Connection, rows: list[Any]) -> None:
    for kind, started_at, t in rows:
        if kind == "start":
            db.execute("INSERT OR IGNORE INTO rpad_runs (started_at, alive_at, stopped_at, "
                       "grace_until) VALUES (?, ?, NULL, ?)", (started_at, started_at, t))
        elif kind == "alive":
            db.execute("UPDATE rpad_runs SET alive_at = max(alive_at, ?) WHERE started_at = ?",
                       (t, started_at))
        else:
            db.execute("UPDATE rpad_runs SET alive_at = max(alive_at, ?), stopped_at = ? "
                       "WHERE started_at = ?", (t, t, started_at))


def _delete_before(db: sqlite3.Connection, table: str, column: str, cut: float, where: str,
                   args: tuple[Any, ...]) -> int:
    """Delete the rows of ``table`` with ``column < cut`` (and ``where``), oldest first (in
    the order of its time index, ties by client), at most PRUNE_CHUNK_ROWS of them; returns
    how many."""
    row = db.execute(f"SELECT {column}, client_id FROM {table} WHERE {where}{column} < ? "
                     f"ORDER BY {column}, client_id LIMIT 1 OFFSET ?",
                     (*args, cut, PRUNE_CHUNK_ROWS)).fetchone()
    if row is None:
        cur = db.execute(f"DELETE FROM {table} WHERE {where}{column} < ?", (*args, cut))
    else:
        cur = db.execute(f"DELETE FROM {table} WHERE {where}({column}, client_id) < (?, ?)",
                         (*args, *row))
    return cur.rowcount
