"""The alerts' state shared by every node: :class:`~rpad.backend.base.SharedAlertStore` on Redis.

Every key is under one hash tag (:class:`~.keys.AlertKeys`), and every write goes through one
script (``lua/alerts.lua``), so that a step of the alerting node — the deliveries it queued,
the policy's memory after it, how far it has read the transitions — is written at once or
not at all. The alerting node's writes carry its lease (``<node>|<token>``): the script
refuses them once another node holds the lease, and the refusal ends the term (see
:meth:`RedisAlertStore.lead` and :mod:`.alert_term`). Silences, overrides and test alerts are
written by whichever node's admin API received them, and announced on the bus (``a``), so
that every node updates its own copy (which marks events ``silenced``); the API reads them
from Redis, so every node answers the same.

Writes are staged (never blocking) and drained by one task: whatever is staged during one
round trip goes in the next. With Redis's ``appendfsync always`` a write is on disk when the
script returns.

Resource handling: :meth:`RedisAlertStore.run` drains the staged writes on every node;
:meth:`RedisAlertStore.lead` keeps the alert lease and runs terms, and at its end writes what
is staged and gives the lease back. Error handling: while Redis is unreachable, staged writes
wait and are retried; :meth:`durable` raises BackendUnavailable (the API answers 503); a
refused (fenced) write is dropped and logged; a script error is a bug and propagates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from ...core.errors import BackendUnavailable
from ...core.jsonenc import dumps
from ..base import AlertState, AlertTerm, DeliveryRecord, OutboxRow
from .alert_term import RedisAlertTerm
from .codec import pairs
from .keys import Keys
from .lease import Lease
from .link import Link, text
from .scripts import SCRIPTS

if TYPE_CHECKING:
    from .presence import RedisPresence

log = logging.getLogger(__name__)

# Staged writes wait this long after a failed round trip (Redis unreachable) before the next.
RETRY_SECONDS = 0.5
# How long the last writes may take when the node stops.
FINAL_WRITE_SECONDS = 2.0
# Stats counters per target.
COUNTERS = ("delivered", "failed", "expired", "dropped", "orphaned", "attempts")
CHANGED_KINDS = ("silences", "overrides", "outbox")
# A fence value no lease ever has: the alerting node's writes staged with no term are refused.
NO_TERM = "-"


def row_json(row: OutboxRow) -> str:
    return dumps({"deliveryId": row.delivery_id, "target": row.target,
                  "createdAt": row.created_at, "attempts": row.attempts,
                  "nextAttemptAt": row.next_attempt_at, "lastError": row.last_error,
                  "payload": row.payload})


def row_from_json(raw: Any) -> OutboxRow:
    d = json.loads(text(raw))
    return OutboxRow(d["deliveryId"], d["target"], float(d["createdAt"]), int(d["attempts"]),
                     float(d["nextAttemptAt"]), d["lastError"], d["payload"])


def record_json(r: DeliveryRecord) -> str:
    return dumps([r.delivery_id, r.target, r.event, r.level, r.clients, r.created_at,
                  r.finished_at, r.attempts, r.outcome, r.detail])


class RedisAlertStore:
    def __init__(self, link: Link, keys: Keys, presence: RedisPresence, *,
                 node_id: str) -> None:
        self.link = link
        self.keys = keys
        self.k = keys.alerts
        self.presence = presence
        self.node_id = node_id
        self.lease = Lease(link, self.k.lease, self.k.lease_tokens, node_id=node_id,
                           role="alert")
        # The current term's lease value (NO_TERM when this node is not the alerting node).
        self.fence = NO_TERM
        self.refused: set[str] = set()
        self.refusals = 0
        self._staged: list[tuple[str, list[str]]] = []
        self._staged_n = 0
        self._written_n = 0
        self._wake = trio.Event()
        self._written = trio.Event()
        self._lock = trio.Lock()
        self._changed: list[Callable[[str], None]] = []
        # Set when a node recorded transitions (the alerting node reads them).
        self.transitions_wake = trio.Event()
        link.on_message("a", self._on_changed)
        link.on_message("t", self._on_transitions)
        link.on_recovered(self._recovered)

    @property
    def holder(self) -> str | None:
        return self.lease.holder

    @property
    def script_keys(self) -> list[str]:
        k = self.k
        return [k.lease, k.outbox, k.order, k.log_seq, k.log_targets, k.stats, k.silences,
                k.overrides, k.policy, k.cursor]

    # -- the bus ---------------------------------------------------------------------------------

    def on_changed(self, callback: Callable[[str], None]) -> None:
        self._changed.append(callback)

    def _tell(self, kind: str) -> None:
        for callback in self._changed:
            callback(kind)

    def _on_changed(self, fields: list[str]) -> None:
        if len(fields) >= 2 and fields[1] in CHANGED_KINDS:
            self._tell(fields[1])

    def _on_transitions(self, fields: list[str]) -> None:
        self.transitions_wake.set()

    async def _recovered(self) -> None:
        for kind in CHANGED_KINDS:
            self._tell(kind)
        self.transitions_wake.set()
        self._wake.set()

    # -- staged writes ---------------------------------------------------------------------------

    def stage(self, fence: str, ops: list[str]) -> None:
        """Stage operations of ``lua/alerts.lua`` under ``fence`` ('' for any node's)."""
        if not ops:
            return
        self._staged.append((fence, ops))
        self._staged_n += 1
        self._wake.set()

    def _stage_term(self, ops: list[str]) -> None:
        self.stage(self.fence, ops)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the staged writes until cancelled."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.write()
            except BackendUnavailable:
                await trio.sleep(RETRY_SECONDS)
                self._wake.set()

    async def write(self) -> None:
        """Write everything staged so far (one round trip). Raises BackendUnavailable (the
        writes stay staged)."""
        async with self._lock:
            staged, self._staged = self._staged, []
            if not staged:
                return
            calls: list[tuple[str, list[str]]] = []
            for fence, ops in staged:
                if calls and calls[-1][0] == fence:
                    calls[-1][1].extend(ops)
                else:
                    calls.append((fence, list(ops)))
            head = [self.k.base + "log:", self.link.bus_channel, self.node_id]
            commands = [self.link.script_command(SCRIPTS["alerts"], self.script_keys,
                                                 [fence, *head, *ops]) for fence, ops in calls]
            try:
                results = await self.link.batch(commands)
            except BackendUnavailable:
                self._staged = staged + self._staged
                raise
            for (fence, _), result in zip(calls, results, strict=True):
                if isinstance(result, Exception):
                    raise result
                if int(result) == 0 and fence not in self.refused:
                    self.refused.add(fence)
                    self.refusals += 1
                    log.warning("alert writes of lease %s refused: another node holds the alert "
                                "lease now", fence)
                    if fence == self.fence:
                        self.lease.drop()
            self._written_n += len(staged)
            self._written.set()
            self._written = trio.Event()

    async def _wait_written(self, *, fail_when_down: bool) -> None:
        target = self._staged_n
        while self._written_n < target:
            if fail_when_down and not self.link.up:
                raise BackendUnavailable("Redis is unreachable: the alert settings are not "
                                         "saved")
            with trio.move_on_after(RETRY_SECONDS):
                await self._written.wait()

    async def durable(self) -> None:
        await self._wait_written(fail_when_down=True)

    async def settled(self, fence: str) -> None:
        """Wait until everything staged so far is written (through outages) and the lease is
        confirmed as still held by ``fence``'s term (a node paused past its lease must not
        deliver what its successor now delivers); never return if ``fence``'s writes were
        refused or its lease is gone (its term is ending)."""
        await self._wait_written(fail_when_down=False)
        token = int(fence.rpartition("|")[2]) if "|" in fence else None
        while True:
            if fence in self.refused or token is None or self.lease.token != token:
                await trio.sleep_forever()
            if await self.lease.confirmed(token):
                return
            await trio.sleep(RETRY_SECONDS)  # Redis unreachable: it cannot say yet

    # -- AlertStore: the alerting node's writes ----------------------------------------------

    def add_delivery(self, row: OutboxRow) -> None:
        self._stage_term(["R", row.delivery_id, row_json(row)])

    def update_delivery(self, row: OutboxRow) -> None:
        self._stage_term(["U", row.delivery_id, row_json(row), "A", row.target])

    def finish_delivery(self, record: DeliveryRecord, keep_per_target: int) -> None:
        attempted = "1" if record.outcome in ("delivered", "failed") else "0"
        self._stage_term(["F", record.delivery_id, record.target, record_json(record),
                          str(max(1, keep_per_target)), record.outcome, attempted])

    # -- AlertStore: any node's writes -----------------------------------------------------------

    def _stage_any(self, ops: list[str]) -> None:
        """An admin's write: refused at once (nothing staged) while Redis is unreachable."""
        if not self.link.up:
            raise BackendUnavailable("Redis is unreachable: nothing was changed")
        self.stage("", ops)

    def put_silence(self, silence_id: str, ends_at: float, body: dict[str, Any]) -> None:
        self._stage_any(["P", "silences", silence_id, dumps(body), "B", "silences"])

    def delete_silence(self, silence_id: str) -> None:
        self._stage_any(["D", "silences", silence_id, "B", "silences"])

    def put_override(self, scope: str, name: str, fields: dict[str, Any]) -> None:
        self._stage_any(["P", "overrides", f"{scope}\t{name}", dumps(fields), "B", "overrides"])

    def delete_override(self, scope: str, name: str) -> None:
        self._stage_any(["D", "overrides", f"{scope}\t{name}", "B", "overrides"])

    async def add_external(self, row: OutboxRow) -> None:
        self._stage_any(["R", row.delivery_id, row_json(row), "B", "outbox"])
        await self.durable()

    # -- reads -----------------------------------------------------------------------------------

    async def settings(self) -> AlertState:
        silences, overrides = await self.link.batch([["HGETALL", self.k.silences],
                                                     ["HGETALL", self.k.overrides]])
        return AlertState([], *self._settings(silences, overrides))

    @staticmethod
    def _settings(silences: Any, overrides: Any
                  ) -> tuple[list[dict[str, Any]], list[tuple[str, str, dict[str, Any]]]]:
        bodies = [json.loads(text(v)) for _, v in pairs(silences)]
        found = []
        for key, v in pairs(overrides):
            scope, _, name = key.partition("\t")
            found.append((scope, name, json.loads(text(v))))
        return bodies, found

    async def load(self) -> AlertState:
        outbox, order, silences, overrides = await self.link.batch([
            ["HGETALL", self.k.outbox], ["ZRANGE", self.k.order, "0", "-1"],
            ["HGETALL", self.k.silences], ["HGETALL", self.k.overrides]])
        return AlertState(self.rows(outbox, order), *self._settings(silences, overrides))

    @staticmethod
    def rows(outbox: Any, order: Any) -> list[OutboxRow]:
        """The outbox's rows in their order (rows without a place go last)."""
        by_id = {did: row_from_json(v) for did, v in pairs(outbox)}
        ordered = [by_id.pop(text(did)) for did in (order or []) if text(did) in by_id]
        return ordered + sorted(by_id.values(), key=lambda r: (r.created_at, r.delivery_id))

    async def pending(self) -> list[OutboxRow]:
        outbox, order = await self.link.batch([["HGETALL", self.k.outbox],
                                               ["ZRANGE", self.k.order, "0", "-1"]])
        return self.rows(outbox, order)

    async def counters(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for key, v in pairs(await self.link.call("HGETALL", self.k.stats)):
            target, _, counter = key.partition("\t")
            out.setdefault(target, dict.fromkeys(COUNTERS, 0))[counter] = int(text(v))
        return out

    async def deliveries(self, target: str | None, limit: int) -> list[DeliveryRecord]:
        if target is None:
            targets = sorted(text(t) for t in await self.link.call("SMEMBERS", self.k.log_targets))
        else:
            targets = [target]
        lists = await self.link.batch([["LRANGE", self.k.log(t), "0", str(limit - 1)]
                                       for t in targets])
        entries = []
        for items in lists:
            for item in items or []:
                n, _, body = text(item).partition("\t")
                entries.append((int(n), DeliveryRecord(*json.loads(body))))
        entries.sort(key=lambda e: e[0], reverse=True)
        return [r for _, r in entries[:limit]]

    # -- the alerting node -----------------------------------------------------------------------

    async def lead(self, term: Callable[[AlertTerm], Awaitable[None]], *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.lease.keep)
                task_status.started()
                while True:
                    while self.lease.token is None:
                        await self.lease.changed()
                    await self._term(term, RedisAlertTerm(self, self.lease.token))
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(FINAL_WRITE_SECONDS):
                    try:
                        await self.write()
                    except BackendUnavailable:
                        log.warning("Redis is unreachable: the alerting node's last writes are "
                                    "lost; the next alerting node takes over from before them")
                await self.lease.release()
                self.fence = NO_TERM

    async def _term(self, term: Callable[[AlertTerm], Awaitable[None]],
                    t: AlertTerm) -> None:
        """One term, until the lease changes (lost, lapsed, or taken anew)."""
        token = t.token
        self.fence = f"{self.node_id}|{token}"
        log.info("this node (%s) is the cluster's alerting node (lease token %d)", self.node_id,
                 token)
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    while self.lease.token == token:
                        await self.lease.changed()
                    log.warning("this node (%s) is no longer the alerting node (lease token %d "
                                "ended)", self.node_id, token)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                await term(t)
                nursery.cancel_scope.cancel()
        finally:
            if self.fence == f"{self.node_id}|{token}" and self.lease.token != token:
                self.fence = NO_TERM
