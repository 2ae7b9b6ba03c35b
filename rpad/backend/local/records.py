"""The console's audit log and batch tasks in SQLite (the ``audit``, ``tasks`` and
``task_results`` tables of :mod:`rpad.backend.local.store`).

Writes are staged in the store's batch (:meth:`Store.stage_rows`, as statements the writer
registered here applies in order inside the commit), so they share its group commit and its
failure handling: a write that cannot be committed is kept and retried, and
:meth:`durable` raises :class:`~rpad.core.errors.StorageUnavailable` meanwhile. Reads use the
store's read connection in a worker thread and see committed data; they first wait for what
this node has staged (a read follows the writes before it).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ...core import tasks as t
from ...core.errors import StorageUnavailable
from ...core.jsonenc import dumps
from ...core.times import iso
from ..base import AuditQuery, AuditRecord
from .store import Store

_AUDIT_COLUMNS = ("id", "kind", "user_id", "role", "address", "client_id", "session_id",
                  "task_id", "command", "started_at", "ended_at", "status", "exit_code",
                  "output_bytes", "truncated", "detail")
_AUDIT_NAMES = ("id", "kind", "userId", "role", "address", "clientId", "sessionId", "taskId",
                "command", "startedAt", "endedAt", "status", "exitCode", "outputBytes",
                "truncated", "detail")
_TIMES = {"startedAt", "endedAt"}


WRITER = "console"


def _apply(db: sqlite3.Connection, statements: list[Any]) -> None:
    for sql, params in statements:
        db.execute(sql, params)


def _attach(store: Store) -> None:
    """Register the console's writer with the store (once per store)."""
    store.add_writer(WRITER, _apply)


def _stage(store: Store, sql: str, params: tuple[Any, ...]) -> None:
    store.stage_rows(WRITER, [(sql, params)])


async def _query(store: Store, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return await store.read(lambda db: db.execute(sql, params).fetchall())


async def _settled(store: Store) -> None:
    """Wait for what is staged to be committed, so that a read sees this node's own writes
    (if the storage fails meanwhile, the read shows what is committed)."""
    try:
        await store.durable()
    except StorageUnavailable:
        pass


class LocalAuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        _attach(store)

    def begin(self, rec: AuditRecord) -> None:
        _stage(self.store, 
            "INSERT INTO audit (ref, kind, user_id, role, address, client_id, session_id, "
            "task_id, command, started_at, status, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.ref, rec.kind, rec.user_id, rec.role, rec.address, rec.client_id,
             rec.session_id, rec.task_id, rec.command, rec.at, rec.status, rec.detail))

    def end(self, ref: str, *, at: float, status: str, exit_code: int | None = None,
            output_bytes: int | None = None, truncated: bool | None = None,
            detail: str | None = None) -> None:
        _stage(self.store, 
            "UPDATE audit SET ended_at = ?, status = ?, exit_code = ?, output_bytes = ?, "
            "truncated = ?, detail = COALESCE(?, detail) WHERE ref = ?",
            (at, status, exit_code, output_bytes,
             None if truncated is None else int(truncated), detail, ref))

    async def durable(self) -> None:
        await self.store.durable()

    def prune(self, before: float) -> None:
        _stage(self.store, "DELETE FROM audit WHERE started_at < ?", (before,))

    async def query(self, q: AuditQuery) -> tuple[list[dict[str, Any]], int]:
        await _settled(self.store)
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("client_id", q.client_id), ("user_id", q.user_id),
                              ("kind", q.kind), ("status", q.status),
                              ("session_id", q.session_id), ("task_id", q.task_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if q.since is not None:
            where.append("started_at >= ?")
            params.append(q.since)
        if q.until is not None:
            where.append("started_at < ?")
            params.append(q.until)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = (await _query(self.store, f"SELECT COUNT(*) FROM audit{clause}", tuple(params)))[0][0]
        rows = await _query(self.store, 
            f"SELECT {', '.join(_AUDIT_COLUMNS)} FROM audit{clause} "
            "ORDER BY started_at DESC, id DESC LIMIT ? OFFSET ?",
            (*params, q.limit, q.offset))
        items = []
        for row in rows:
            item = dict(zip(_AUDIT_NAMES, row, strict=True))
            for key in _TIMES:
                item[key] = iso(item[key])
            if item["truncated"] is not None:
                item["truncated"] = bool(item["truncated"])
            items.append(item)
        return items, total


_TASK_COLUMNS = ("task_id", "source", "created_at", "status", "command", "created_by", "role",
                 "address", "selector", "concurrency", "timeout_seconds", "started_at",
                 "ended_at", "total", "succeeded", "failed", "progress", "current_device")
_RESULT_COLUMNS = ("client_id", "status", "exit_code", "signal", "started_at", "ended_at",
                   "duration_ms", "output_bytes", "truncated", "error", "output_tail")


def _task_row(rec: t.TaskRecord) -> tuple[Any, ...]:
    return (rec.task_id, rec.source, rec.created_at, rec.status, rec.command, rec.created_by,
            rec.role, rec.address, dumps(rec.selector), rec.concurrency, rec.timeout_seconds,
            rec.started_at, rec.ended_at, rec.total, rec.succeeded, rec.failed, rec.progress,
            rec.current_device)


def _task_from(row: tuple[Any, ...]) -> t.TaskRecord:
    d = dict(zip(_TASK_COLUMNS, row, strict=True))
    d["selector"] = json.loads(d["selector"] or "{}")
    return t.TaskRecord(**d)


def _result_from(row: tuple[Any, ...]) -> t.ResultRecord:
    d = dict(zip(_RESULT_COLUMNS, row, strict=True))
    d["truncated"] = bool(d["truncated"])
    return t.ResultRecord(**d)


class LocalTaskStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        _attach(store)

    def put_task(self, task: t.TaskRecord) -> None:
        _stage(self.store, f"INSERT OR REPLACE INTO tasks ({', '.join(_TASK_COLUMNS)}) "
                         f"VALUES ({', '.join('?' * len(_TASK_COLUMNS))})", _task_row(task))

    def put_published(self, task: t.TaskRecord) -> None:
        _stage(self.store, 
            f"INSERT INTO tasks ({', '.join(_TASK_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_TASK_COLUMNS))}) "
            "ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, "
            "ended_at = excluded.ended_at, total = excluded.total, "
            "succeeded = excluded.succeeded, failed = excluded.failed, "
            "progress = excluded.progress, current_device = excluded.current_device "
            "WHERE tasks.source = 'publish'", _task_row(task))

    def put_result(self, task_id: str, position: int, result: t.ResultRecord) -> None:
        r = result
        _stage(self.store, 
            "INSERT OR REPLACE INTO task_results (task_id, position, client_id, status, "
            "exit_code, signal, started_at, ended_at, duration_ms, output_bytes, truncated, "
            "error, output_tail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (task_id, position, r.client_id, r.status, r.exit_code, r.signal, r.started_at,
             r.ended_at, r.duration_ms, r.output_bytes, int(r.truncated), r.error,
             r.output_tail))

    async def durable(self) -> None:
        await self.store.durable()

    async def get_task(self, task_id: str) -> tuple[t.TaskRecord, list[t.ResultRecord]] | None:
        await _settled(self.store)
        rows = await _query(self.store, 
            f"SELECT {', '.join(_TASK_COLUMNS)} FROM tasks WHERE task_id = ?", (task_id,))
        if not rows:
            return None
        results = await _query(self.store, 
            f"SELECT {', '.join(_RESULT_COLUMNS)} FROM task_results WHERE task_id = ? "
            "ORDER BY position", (task_id,))
        return _task_from(rows[0]), [_result_from(r) for r in results]

    async def list_tasks(self, *, created_by: str | None, status: str | None, limit: int,
                         offset: int) -> tuple[list[t.TaskRecord], int]:
        await _settled(self.store)
        where: list[str] = []
        params: list[Any] = []
        if created_by is not None:
            where.append("created_by = ? AND source = 'rpad'")
            params.append(created_by)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = (await _query(self.store, f"SELECT COUNT(*) FROM tasks{clause}", tuple(params)))[0][0]
        rows = await _query(self.store, 
            f"SELECT {', '.join(_TASK_COLUMNS)} FROM tasks{clause} "
            "ORDER BY created_at DESC, task_id LIMIT ? OFFSET ?", (*params, limit, offset))
        return [_task_from(r) for r in rows], total

    async def interrupt_running(self, now: float) -> int:
        running = await _query(self.store, 
            "SELECT task_id FROM tasks WHERE source = 'rpad' AND status IN (?, ?)",
            (t.PENDING, t.RUNNING))
        if not running:
            return 0
        _stage(self.store, 
            "UPDATE task_results SET status = ?, ended_at = ?, error = ? WHERE status IN (?, ?) "
            "AND task_id IN (SELECT task_id FROM tasks WHERE source = 'rpad' AND status IN (?, ?))",
            (t.R_INTERRUPTED, now, "rpad stopped while it ran", t.R_PENDING, t.R_RUNNING,
             t.PENDING, t.RUNNING))
        _stage(self.store, 
            "UPDATE tasks SET status = ?, ended_at = ?, progress = 100, current_device = NULL, "
            "failed = total - succeeded WHERE source = 'rpad' AND status IN (?, ?)",
            (t.INTERRUPTED, now, t.PENDING, t.RUNNING))
        await self.store.durable()
        return len(running)

    def prune(self, before: float) -> None:
        _stage(self.store, "DELETE FROM task_results WHERE task_id IN (SELECT task_id FROM tasks "
                         "WHERE ended_at IS NOT NULL AND ended_at < ?)", (before,))
        _stage(self.store, "DELETE FROM tasks WHERE ended_at IS NOT NULL AND ended_at < ?",
                         (before,))
