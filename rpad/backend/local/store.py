"""SQLite persistence with group commit.

Writes are *staged* synchronously (cheap: a tuple into a dict) and become durable when the
committer task applies the staged batch in a worker thread, at most every
``commit_interval_ms`` or as soon as ``max_batch`` writes are waiting. A request handler stages
its writes and then awaits :meth:`Store.durable`, which returns once the batch holding them is
committed, so a 2xx is only sent for what is on disk, and a thousand concurrent heartbeats cost
one fsync.

Resource handling: one write connection, used only by the committer's worker thread (one batch
at a time) and at open/close; one read connection for history queries, guarded by a lock.
Error handling: a failed commit (disk full, read-only file system, I/O error) fails every
waiter of that batch with :class:`StorageUnavailable`; the batch is put back so that the next
commit retries it, and the committer keeps running.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from ...core.errors import StorageUnavailable
from ...core.jsonenc import dumps
from ...core.model import Client

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4

# After a failed commit: the first retry comes this soon (new writes are tried no sooner), and
# retries with nothing new staged back off, doubling, to at most this interval.
RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0
# While commits keep failing, one log line per this interval (not one per attempt).
FAILURE_LOG_INTERVAL_SECONDS = 30.0
# Status-history entries younger than this are kept beyond presence.history_per_client (the
# 30-day availability figures need them), up to EVENTS_HARD_CAP_PER_CLIENT per client.
EVENTS_KEEP_SECONDS = 31 * 86400.0
EVENTS_HARD_CAP_PER_CLIENT = 10_000

# Forward migrations: MIGRATIONS[i] upgrades a database of user_version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE clients (
        client_id TEXT PRIMARY KEY,
        registered_at REAL NOT NULL,
        name TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        metadata TEXT NOT NULL DEFAULT '{}',
        timeout_seconds REAL,
        registered INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        reported_status TEXT,
        version TEXT,
        ip_address TEXT,
        os_type TEXT,
        interval_seconds REAL,
        last_heartbeat_at REAL,
        online_since REAL,
        offline_since REAL,
        clock_skew_seconds REAL,
        latest_metrics TEXT
    ) WITHOUT ROWID;
    CREATE TABLE client_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        client_id TEXT NOT NULL,
        at REAL NOT NULL,
        status TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX client_events_by_client ON client_events (client_id, id);
    CREATE TABLE token_generations (
        client_id TEXT PRIMARY KEY,
        gen INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # Metrics history (rpad/backend/local/history.py): each heartbeat's metrics as sent (raw),
    # the closed buckets of every tier, and rpad's own runs (for availability figures).
    """
    CREATE TABLE metric_samples (
        client_id TEXT NOT NULL,
        at REAL NOT NULL,
        v BLOB NOT NULL,
        PRIMARY KEY (client_id, at)
    ) WITHOUT ROWID;
    CREATE INDEX metric_samples_by_time ON metric_samples (at);
    CREATE TABLE metric_rollups (
        client_id TEXT NOT NULL,
        step INTEGER NOT NULL,
        start INTEGER NOT NULL,
        v BLOB NOT NULL,
        PRIMARY KEY (client_id, step, start)
    ) WITHOUT ROWID;
    CREATE INDEX metric_rollups_by_time ON metric_rollups (step, start);
    CREATE TABLE rpad_runs (
        started_at REAL PRIMARY KEY,
        alive_at REAL NOT NULL,
        stopped_at REAL,
        grace_until REAL NOT NULL
    );
    CREATE INDEX client_events_by_time ON client_events (client_id, at);
    """,
    # 3: alerts (issue 14): the durable outbox, the delivery log, silences, policy overrides
    # made through the admin API. Written by rpad/backend/local/alert_store.py.
    """
    CREATE TABLE alert_outbox (
        delivery_id TEXT PRIMARY KEY,
        target TEXT NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        payload TEXT NOT NULL
    );
    CREATE TABLE alert_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id TEXT NOT NULL,
        target TEXT NOT NULL,
        event TEXT NOT NULL,
        level TEXT NOT NULL,
        clients TEXT NOT NULL,
        created_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        attempts INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX alert_deliveries_by_target ON alert_deliveries (target, id);
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        ends_at REAL NOT NULL,
        body TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE alert_policy_overrides (
        scope TEXT NOT NULL,
        name TEXT NOT NULL,
        fields TEXT NOT NULL,
        PRIMARY KEY (scope, name)
    ) WITHOUT ROWID;
    """,
    # 4: the console (issue 12, rpad/backend/local/records.py): its audit log, and batch tasks
    # with their per-client results.
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ref TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        user_id TEXT NOT NULL,
        role TEXT NOT NULL,
        address TEXT,
        client_id TEXT,
        session_id TEXT,
        task_id TEXT,
        command TEXT,
        started_at REAL NOT NULL,
        ended_at REAL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        output_bytes INTEGER,
        truncated INTEGER,
        detail TEXT
    );
    CREATE INDEX audit_by_time ON audit (started_at, id);
    CREATE INDEX audit_by_client ON audit (client_id, id);
    CREATE INDEX audit_by_user ON audit (user_id, id);
    CREATE TABLE tasks (
        task_id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL,
        command TEXT,
        created_by TEXT,
        role TEXT,
        address TEXT,
        selector TEXT NOT NULL DEFAULT '{}',
        concurrency INTEGER,
        timeout_seconds REAL,
        started_at REAL,
        ended_at REAL,
        total INTEGER NOT NULL DEFAULT 0,
        succeeded INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        progress REAL NOT NULL DEFAULT 0,
        current_device TEXT
    ) WITHOUT ROWID;
    CREATE INDEX tasks_by_time ON tasks (created_at);
    CREATE TABLE task_results (
        task_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        client_id TEXT NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        signal INTEGER,
        started_at REAL,
        ended_at REAL,
        duration_ms INTEGER,
        output_bytes INTEGER NOT NULL DEFAULT 0,
        truncated INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        output_tail TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (task_id, client_id)
    ) WITHOUT ROWID;
    """,
]
assert len(MIGRATIONS) == SCHEMA_VERSION

_CLIENT_COLUMNS = (
    "client_id, registered_at, name, tags, metadata, timeout_seconds, registered, status, "
    "reported_status, version, ip_address, os_type, interval_seconds, last_heartbeat_at, "
    "online_since, offline_since, clock_skew_seconds, latest_metrics"
)
_UPSERT = f"INSERT OR REPLACE INTO clients ({_CLIENT_COLUMNS}) VALUES ({', '.join('?' * 18)})"

ClientRow = tuple[Any, ...]
T = TypeVar("T")


class StorageCorrupt(Exception):
    """The database cannot be opened or is from a newer rpad."""


def client_row(c: Client) -> ClientRow:
    return (
        c.client_id, c.registered_at, c.name, dumps(c.tags) if c.tags else "[]",
        dumps(c.metadata) if c.metadata else "{}",
        c.timeout_seconds, int(c.registered), c.status, c.reported_status, c.version,
        c.ip_address, c.os_type, c.interval_seconds, c.last_heartbeat_at, c.online_since,
        c.offline_since, c.clock_skew_seconds,
        dumps(c.latest_metrics) if c.latest_metrics is not None else None,
    )


def client_from_row(r: sqlite3.Row | tuple[Any, ...]) -> Client:
    return Client(
        client_id=r[0], registered_at=r[1], name=r[2], tags=json.loads(r[3]),
        metadata=json.loads(r[4]), timeout_seconds=r[5], registered=bool(r[6]), status=r[7],
        reported_status=r[8], version=r[9], ip_address=r[10], os_type=r[11],
        interval_seconds=r[12], last_heartbeat_at=r[13], online_since=r[14],
        offline_since=r[15], clock_skew_seconds=r[16],
        latest_metrics=json.loads(r[17]) if r[17] is not None else None,
    )


class _Batch:
    """Staged writes and the event their waiters wait on."""

    __slots__ = ("clients", "deleted", "done", "error", "events", "gens", "meta", "rows", "size")

    def __init__(self) -> None:
        self.clients: dict[str, ClientRow] = {}
        self.deleted: set[str] = set()
        self.events: list[tuple[str, float, str, str | None]] = []
        self.gens: dict[str, int] = {}
        self.meta: dict[str, str] = {}
        # Rows of other tables, by writer (see Store.add_writer), in staging order.
        self.rows: dict[str, list[Any]] = {}
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.size = 0

    def merge_under(self, newer: _Batch) -> None:
        """Put this (failed, older) batch's writes back under a newer batch's."""
        for cid, row in self.clients.items():
            if cid not in newer.clients and cid not in newer.deleted:
                newer.clients[cid] = row
        for cid in self.deleted:
            if cid not in newer.clients:
                newer.deleted.add(cid)
        newer.events[:0] = self.events
        for cid, gen in self.gens.items():
            newer.gens.setdefault(cid, gen)
        for k, v in self.meta.items():
            newer.meta.setdefault(k, v)
        for key, rows in self.rows.items():
            newer.rows[key] = rows + newer.rows.get(key, [])
        newer.size += self.size


class Loaded:
    def __init__(self, clients: list[Client], gens: dict[str, int], meta: dict[str, str]) -> None:
        self.clients = clients
        self.gens = gens
        self.meta = meta


class Store:
    def __init__(self, path: Path, *, commit_interval_ms: float = 10.0, max_batch: int = 2000,
                 history_per_client: int = 100,
                 on_commit: Callable[[int, float], None] | None = None) -> None:
        self.path = path
        self.commit_interval_seconds = commit_interval_ms / 1000.0
        self.max_batch = max_batch
        self.history_per_client = history_per_client
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._batch = _Batch()
        # The batch being committed right now, if any: durable() waits for it too.
        self._in_flight: _Batch | None = None
        self._wakeup = trio.Event()
        self._full = trio.Event()
        self._closed = False
        # Trio time at which the last commit started (the cadence of group commit).
        self._last_commit_started = -math.inf
        # Storage failure state: since when commits fail (trio time), the next retry delay.
        self.failing_since: float | None = None
        self._retry_delay = RETRY_MIN_SECONDS
        self._failure_logged_at = 0.0
        self._failed_attempts = 0
        # Counters for metrics.
        self.commits = 0
        self.commit_failures = 0
        self.last_batch_size = 0
        self.last_commit_seconds = 0.0
        # Told the size and duration of every successful commit (the metrics' histograms).
        self.on_commit = on_commit
        # Writers of other tables' staged rows, by key (called inside the commit).
        self._writers: dict[str, Callable[[sqlite3.Connection, list[Any]], None]] = {}

    def reconfigure(self, *, commit_interval_ms: float, max_batch: int,
                    history_per_client: int) -> None:
        """New batching and retention settings (SIGHUP); they apply from the next commit."""
        self.commit_interval_seconds = commit_interval_ms / 1000.0
        self.max_batch = max_batch
        self.history_per_client = history_per_client

    # -- opening and loading (call from a worker thread) ---------------------------------------

    def open(self) -> Loaded:
        """Open (creating or migrating) the database and read everything rpad keeps in memory."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.path.exists():
                # Client data is nobody else's business: the file (and so SQLite's -wal and
                # -shm files, which copy its mode) is the owner's alone.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StorageCorrupt(f"cannot create {self.path}: {exc.strerror or exc}") from None
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageCorrupt(f"cannot open {self.path}: {exc}") from None
        try:
            # The version first: a database of a newer rpad is refused before anything
            # (even the journal mode) is changed in it.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageCorrupt(
                    f"{self.path} has schema version {version}, newer than this rpad's "
                    f"{SCHEMA_VERSION}: upgrade rpad or restore an older database"
                )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            for v in range(version, SCHEMA_VERSION):
                log.info("migrating database %s from schema version %d to %d", self.path, v, v + 1)
                try:
                    db.executescript(
                        f"BEGIN; {MIGRATIONS[v]} PRAGMA user_version = {v + 1}; COMMIT;")
                except sqlite3.Error as exc:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise StorageCorrupt(
                        f"cannot migrate {self.path} from schema version {v} to {v + 1}: {exc}"
                    ) from None
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StorageCorrupt(f"cannot open {self.path}: {exc}") from None
        except BaseException:
            db.close()
            raise
        self._db = db
        self._reader = sqlite3.connect(self.path, check_same_thread=False)
        clients = [client_from_row(r) for r in db.execute(f"SELECT {_CLIENT_COLUMNS} FROM clients")]
        gens = dict(db.execute("SELECT client_id, gen FROM token_generations").fetchall())
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        return Loaded(clients, gens, meta)

    def close(self) -> None:
        """Commit what is staged and close. Idempotent; call from a worker thread or at exit."""
        if self._closed:
            return
        self._closed = True
        batch, self._batch = self._batch, _Batch()
        if self._db is not None:
            if batch.size:
                try:
                    self._apply(batch)
                except sqlite3.Error as exc:
                    log.error("final commit failed, %d writes lost: %s", batch.size, exc)
                    batch.error = exc
            self._db.close()
        if self._reader is not None:
            self._reader.close()
        batch.done.set()

    # -- staging (on the event loop, never blocks) ---------------------------------------------

    def _staged(self, n: int = 1) -> _Batch:
        if self._closed:
            raise StorageUnavailable("the store is closed")
        b = self._batch
        b.size += n
        self._wakeup.set()
        if b.size >= self.max_batch:
            self._full.set()
        return b

    def put_client(self, client: Client) -> None:
        b = self._staged()
        b.deleted.discard(client.client_id)
        b.clients[client.client_id] = client_row(client)

    def delete_client(self, client_id: str) -> None:
        b = self._staged()
        b.clients.pop(client_id, None)
        b.deleted.add(client_id)

    def add_history(self, client_id: str, at: float, status: str, reason: str | None) -> None:
        self._staged().events.append((client_id, at, status, reason))

    def set_token_generation(self, client_id: str, gen: int) -> None:
        self._staged().gens[client_id] = gen

    def set_meta(self, key: str, value: str) -> None:
        self._staged().meta[key] = value

    def add_writer(self, key: str, write: Callable[[sqlite3.Connection, list[Any]], None]) -> None:
        """Register the writer of rows staged under ``key`` with :meth:`stage_rows`: it is
        called with the write connection and the batch's rows (in staging order) inside the
        group commit's transaction, after the clients and history of that batch; it must be
        idempotent (a failed commit is retried with the next batch)."""
        self._writers[key] = write

    def stage_rows(self, key: str, rows: list[Any]) -> None:
        """Stage rows for the writer registered under ``key``; they share the next commit."""
        if not rows:
            return
        b = self._staged(len(rows))
        have = b.rows.get(key)
        if have is None:
            b.rows[key] = list(rows)
        else:
            have.extend(rows)

    async def durable(self) -> None:
        """Wait until everything staged so far is committed. Raises StorageUnavailable."""
        batch = self._batch
        if batch.size == 0:
            # Nothing new staged (after close nothing can be): wait for the batch being
            # committed, if one is, since it holds what was staged before.
            if self._in_flight is None:
                return
            batch = self._in_flight
        await batch.done.wait()
        if batch.error is not None:
            raise StorageUnavailable(str(batch.error))

    # -- the committer -------------------------------------------------------------------------

    async def run_committer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit staged batches until cancelled. Cancellation never interrupts a commit that
        has started (worker threads are not abandoned); :meth:`close` commits the rest."""
        task_status.started()
        while True:
            await self._wakeup.wait()
            if self.commit_interval_seconds > 0 and self._batch.size < self.max_batch:
                # At most one commit per interval, counted from the start of the previous
                # one: writes staged while a commit ran are committed one interval after it
                # started, not one interval after it ended, so a steady load sees a commit
                # every max(interval, commit time) rather than every interval + commit time;
                # and a write after a quiet spell is committed at once.
                with trio.move_on_at(self._last_commit_started + self.commit_interval_seconds):
                    await self._full.wait()
            batch, self._batch = self._batch, _Batch()
            self._wakeup = trio.Event()
            self._full = trio.Event()
            if batch.size == 0:
                batch.done.set()
                continue
            started = self._last_commit_started = trio.current_time()
            self._in_flight = batch
            try:
                await trio.to_thread.run_sync(self._apply, batch)
            except sqlite3.Error as exc:
                self.commit_failures += 1
                self._log_failure(batch.size, exc)
                batch.error = exc
                batch.merge_under(self._batch)  # retried with the next batch
                self._in_flight = None
                batch.done.set()
                # Retry soon when new writes are waiting (their requests want an answer), else
                # back off; either way, the storage's recovery is noticed without a restart.
                await trio.sleep(max(self.commit_interval_seconds, RETRY_MIN_SECONDS))
                with trio.move_on_after(self._retry_delay):
                    await self._wakeup.wait()
                self._retry_delay = min(2 * self._retry_delay, RETRY_MAX_SECONDS)
                self._wakeup.set()
                continue
            if self.failing_since is not None:
                log.warning("storage recovered: committed %d pending writes after %.1f s of "
                            "failures (%d attempts)", batch.size,
                            trio.current_time() - self.failing_since, self._failed_attempts)
                self.failing_since = None
                self._retry_delay = RETRY_MIN_SECONDS
                self._failed_attempts = 0
            elapsed = trio.current_time() - started
            self.commits += 1
            self.last_batch_size = batch.size
            self.last_commit_seconds = elapsed
            if self.on_commit is not None:
                self.on_commit(batch.size, elapsed)
            self._in_flight = None
            batch.done.set()

    def _apply(self, b: _Batch) -> None:
        db = self._db
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
            if b.deleted:
                ids = [(cid,) for cid in b.deleted]
                db.executemany("DELETE FROM clients WHERE client_id = ?", ids)
                db.executemany("DELETE FROM client_events WHERE client_id = ?", ids)
                db.executemany("DELETE FROM metric_samples WHERE client_id = ?", ids)
                db.executemany("DELETE FROM metric_rollups WHERE client_id = ?", ids)
            if b.clients:
                db.executemany(_UPSERT, b.clients.values())
            if b.events:
                db.executemany(
                    "INSERT INTO client_events (client_id, at, status, reason) VALUES (?, ?, ?, ?)",
                    b.events,
                )
                # Keep the newest history_per_client entries of each client touched, and the
                # younger ones up to the hard cap (availability over 30 days reads them).
                keep = self.history_per_client
                cutoff = max(e[1] for e in b.events) - EVENTS_KEEP_SECONDS
                for cid in {e[0] for e in b.events}:
                    db.execute(
                        "DELETE FROM client_events WHERE client_id = ? AND ((at < ? AND "
                        "id <= COALESCE((SELECT id FROM client_events WHERE client_id = ? "
                        "ORDER BY id DESC LIMIT 1 OFFSET ?), -1)) OR id <= COALESCE(("
                        "SELECT id FROM client_events WHERE client_id = ? "
                        "ORDER BY id DESC LIMIT 1 OFFSET ?), -1))",
                        (cid, cutoff, cid, keep, cid, max(keep, EVENTS_HARD_CAP_PER_CLIENT)),
                    )
            if b.gens:
                db.executemany(
                    "INSERT OR REPLACE INTO token_generations (client_id, gen) VALUES (?, ?)",
                    b.gens.items(),
                )
            if b.meta:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", b.meta.items())
            for key, rows in b.rows.items():
                self._writers[key](db, rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    # -- reads ---------------------------------------------------------------------------------

    def _history(self, client_id: str, limit: int) -> list[tuple[float, str, str | None]]:
        assert self._reader is not None
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT at, status, reason FROM client_events WHERE client_id = ? "
                "ORDER BY id DESC LIMIT ?",
                (client_id, limit),
            ).fetchall()
        return rows

    async def history(self, client_id: str, limit: int = 100) -> list[tuple[float, str, str | None]]:
        """The client's status history, newest first. Raises StorageUnavailable."""
        try:
            return await trio.to_thread.run_sync(self._history, client_id, limit)
        except sqlite3.Error as exc:
            log.error("reading the history of %s failed: %s", client_id, exc)
            raise StorageUnavailable(str(exc)) from None

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` with the read connection in a worker thread (one reader at a time).
        Raises StorageUnavailable when SQLite fails."""

        def locked() -> T:
            assert self._reader is not None
            with self._read_lock:
                return fn(self._reader)

        try:
            return await trio.to_thread.run_sync(locked)
        except sqlite3.Error as exc:
            log.error("a read of the database failed: %s", exc)
            raise StorageUnavailable(str(exc)) from None

    def _log_failure(self, size: int, exc: sqlite3.Error) -> None:
        """The first failure at once, then one line per FAILURE_LOG_INTERVAL_SECONDS."""
        now = trio.current_time()
        self._failed_attempts += 1
        if self.failing_since is None:
            self.failing_since = now
        elif now - self._failure_logged_at < FAILURE_LOG_INTERVAL_SECONDS:
            return
        self._failure_logged_at = now
        log.error("commit of %d writes failed (%d attempts in %.1f s), retrying: %s", size,
                  self._failed_attempts, now - self.failing_since, exc)
