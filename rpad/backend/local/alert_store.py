"""The alerts' durable state in the local SQLite database (schema version 2 of
:mod:`rpad.backend.local.store`): :class:`~rpad.backend.base.AlertStore` for one node.

Writes are staged into the store's next group commit (the store's writer ``"alerts"``: each
staged row is one statement and its parameters, run in the order staged), so alerts cost no
fsync of their own; reads run on the store's read connection in a worker thread.

Error handling: a failed commit keeps the staged writes for the next one (the store's rule);
a failed read raises :class:`~rpad.core.errors.StorageUnavailable`.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ...core.jsonenc import dumps
from ..base import AlertState, DeliveryRecord, OutboxRow
from .store import Store

# (The outbox's rowid keeps the order in which deliveries were made.)
_INSERT_OUTBOX = ("INSERT OR REPLACE INTO alert_outbox (delivery_id, target, created_at, "
                  "attempts, next_attempt_at, last_error, payload) VALUES (?, ?, ?, ?, ?, ?, ?)")
_UPDATE_OUTBOX = ("UPDATE alert_outbox SET attempts = ?, next_attempt_at = ?, last_error = ? "
                  "WHERE delivery_id = ?")
_DELETE_OUTBOX = "DELETE FROM alert_outbox WHERE delivery_id = ?"
_INSERT_LOG = ("INSERT INTO alert_deliveries (delivery_id, target, event, level, clients, "
               "created_at, finished_at, attempts, outcome, detail) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_PRUNE_LOG = ("DELETE FROM alert_deliveries WHERE target = ? AND id <= COALESCE(("
              "SELECT id FROM alert_deliveries WHERE target = ? ORDER BY id DESC LIMIT 1 "
              "OFFSET ?), -1)")
_LOG_COLUMNS = ("delivery_id, target, event, level, clients, created_at, finished_at, attempts, "
                "outcome, detail")


WRITER = "alerts"


def _write(db: sqlite3.Connection, rows: list[Any]) -> None:
    # Idempotent on a retried batch: inserts replace, updates and deletes repeat harmlessly,
    # and a log record already written would be written again only if its commit failed (then
    # it was not written).
    for sql, params in rows:
        db.execute(sql, params)


class LocalAlertStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.add_writer(WRITER, _write)

    def _stage(self, sql: str, params: tuple[Any, ...]) -> None:
        self.store.stage_rows(WRITER, [(sql, params)])

    async def load(self) -> AlertState:
        def read(db: sqlite3.Connection) -> AlertState:
            outbox = [OutboxRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]))
                      for r in db.execute(
                          "SELECT delivery_id, target, created_at, attempts, next_attempt_at, "
                          "last_error, payload FROM alert_outbox ORDER BY rowid")]
            silences = [json.loads(r[0]) for r in db.execute("SELECT body FROM silences")]
            overrides = [(r[0], r[1], json.loads(r[2])) for r in db.execute(
                "SELECT scope, name, fields FROM alert_policy_overrides")]
            return AlertState(outbox, silences, overrides)

        return await self.store.read(read)

    def add_delivery(self, row: OutboxRow) -> None:
        self._stage(_INSERT_OUTBOX, (row.delivery_id, row.target, row.created_at, row.attempts,
                                     row.next_attempt_at, row.last_error, dumps(row.payload)))

    def update_delivery(self, row: OutboxRow) -> None:
        self._stage(_UPDATE_OUTBOX, (row.attempts, row.next_attempt_at, row.last_error,
                                     row.delivery_id))

    def finish_delivery(self, record: DeliveryRecord, keep_per_target: int) -> None:
        r = record
        self._stage(_DELETE_OUTBOX, (r.delivery_id,))
        self._stage(_INSERT_LOG, (r.delivery_id, r.target, r.event, r.level, r.clients,
                                  r.created_at, r.finished_at, r.attempts, r.outcome, r.detail))
        self._stage(_PRUNE_LOG, (r.target, r.target, keep_per_target))

    async def deliveries(self, target: str | None, limit: int) -> list[DeliveryRecord]:
        def read(db: sqlite3.Connection) -> list[DeliveryRecord]:
            if target is None:
                rows = db.execute(f"SELECT {_LOG_COLUMNS} FROM alert_deliveries "
                                  "ORDER BY id DESC LIMIT ?", (limit,))
            else:
                rows = db.execute(f"SELECT {_LOG_COLUMNS} FROM alert_deliveries WHERE target = ? "
                                  "ORDER BY id DESC LIMIT ?", (target, limit))
            return [DeliveryRecord(*r) for r in rows]

        return await self.store.read(read)

    def put_silence(self, silence_id: str, ends_at: float, body: dict[str, Any]) -> None:
        self._stage("INSERT OR REPLACE INTO silences (id, ends_at, body) VALUES (?, ?, ?)",
                    (silence_id, ends_at, dumps(body)))

    def delete_silence(self, silence_id: str) -> None:
        self._stage("DELETE FROM silences WHERE id = ?", (silence_id,))

    def put_override(self, scope: str, name: str, fields: dict[str, Any]) -> None:
        self._stage("INSERT OR REPLACE INTO alert_policy_overrides (scope, name, fields) "
                    "VALUES (?, ?, ?)", (scope, name, dumps(fields)))

    def delete_override(self, scope: str, name: str) -> None:
        self._stage("DELETE FROM alert_policy_overrides WHERE scope = ? AND name = ?",
                    (scope, name))

    async def durable(self) -> None:
        await self.store.durable()
