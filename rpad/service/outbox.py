"""The durable alert outbox: every alert for every target is a delivery, persisted before its
first attempt and retried until it is delivered, refused, or past ``max_attempts`` /
``alerts.max_age_seconds``; then it leaves the outbox for the delivery log.

One :class:`TargetQueue` per target delivers its deliveries one at a time, in order (a
recovery never overtakes the outage it ends), retrying after 1 s, 2 s, 4 s, … at most
:data:`RETRY_MAXIMUM_SECONDS`, counted from the end of the failed attempt. The outbox rows and
their updates are staged in the store's group commit (:class:`~rpad.backend.base.AlertStore`):
no fsync of their own, and never awaited on the heartbeat path.

Exactly once per delivery id across a restart: a delivery is removed from the outbox in the
same commit as its log record, once its receiver accepted it; at a graceful shutdown attempts
in flight are given :data:`SHUTDOWN_DRAIN_SECONDS` to finish (and be recorded) before the
final commit, and the rest are delivered after the restart with their attempt counts and the
same delivery id. A crash (``kill -9``) between a receiver's answer and the next commit can
repeat that one delivery after the restart: receivers deduplicate on ``X-Rpad-Delivery``.

Resource handling: :meth:`Outbox.run` runs the workers in its own nursery until cancelled or
:meth:`Outbox.aclose`; a reload (:meth:`Outbox.set_channels`) keeps the queues of targets
whose name is unchanged (a changed URL applies to what is queued), starts new ones, and moves
the deliveries of removed targets to the log as ``orphaned``.

Error handling: delivery failures are results, logged and counted, never raised; a store that
is closed (shutdown) ends the bookkeeping quietly.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from ..backend.base import AlertStore, DeliveryRecord, OutboxRow
from ..client.backoff import backoff_delay
from ..core.errors import StorageUnavailable
from ..core.times import iso
from .channels import Channel

log = logging.getLogger(__name__)

RETRY_INITIAL_SECONDS = 1.0
RETRY_MAXIMUM_SECONDS = 300.0
SHUTDOWN_DRAIN_SECONDS = 5.0
# Log a run of drops once, then again every this many drops.
DROP_LOG_EVERY = 100
# The delivery log names at most this many clients of a grouped alert.
LOG_CLIENTS = 5
FINISHED_IDS_KEPT = 10_000


def retry_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
    return backoff_delay(attempt, initial=RETRY_INITIAL_SECONDS, maximum=RETRY_MAXIMUM_SECONDS,
                         jitter=0.0)


def clients_summary(payload: dict[str, Any]) -> str:
    clients = payload.get("clients")
    if clients is None:
        return str(payload.get("clientId") or "-")
    ids = [str(c.get("clientId")) for c in clients]
    more = f", … ({len(ids)} clients)" if len(ids) > LOG_CLIENTS else ""
    return ", ".join(ids[:LOG_CLIENTS]) + more


def new_id() -> str:
    return secrets.token_hex(12)


class TargetQueue:
    """One target's deliveries and their worker."""

    def __init__(self, channel: Channel, outbox: Outbox) -> None:
        self.channel = channel
        self.outbox = outbox
        self.pending: deque[OutboxRow] = deque()
        self.in_flight: OutboxRow | None = None
        self.cancel_scope = trio.CancelScope()
        self._wake = trio.Event()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.expired = 0
        self.attempts = 0

    @property
    def name(self) -> str:
        return self.channel.name

    @property
    def queued(self) -> int:
        """Deliveries not finished yet (the one in flight included)."""
        return len(self.pending) + (self.in_flight is not None)

    def wake(self) -> None:
        self._wake.set()

    def offer(self, row: OutboxRow) -> bool:
        """Queue a delivery; False (counted, logged) when the queue is full."""
        if self.queued >= self.channel.queue_size:
            self.dropped += 1
            if self.dropped % DROP_LOG_EVERY == 1:
                log.warning("%s %s: queue full, alert dropped (%d dropped so far)",
                            self.channel.kind, self.channel.label, self.dropped)
            return False
        self.pending.append(row)
        self._wake.set()
        return True

    async def run(self) -> None:
        outbox, wall = self.outbox, self.outbox.wall_clock
        with self.cancel_scope:
            while not outbox.stopping and outbox.queues.get(self.name) is self:
                if not self.pending:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                row = self.pending[0]
                wait = row.next_attempt_at - wall()
                if wait > 0:
                    self._wake = trio.Event()
                    with trio.move_on_after(wait):
                        await self._wake.wait()  # a reload or shutdown looks again
                    continue
                if wall() - row.created_at > outbox.max_age_seconds():
                    self.pending.popleft()
                    self.expired += 1
                    log.warning("%s %s: gave up on %s after %d attempts: older than "
                                "alerts.max_age_seconds", self.channel.kind, self.channel.label,
                                row.payload.get("event"), row.attempts)
                    outbox.finish(row, "expired", row.last_error)
                    continue
                await self._attempt(row)

    async def _attempt(self, row: OutboxRow) -> None:
        outbox, channel = self.outbox, self.channel
        if outbox.before_attempt is not None:
            await outbox.before_attempt()  # its row is written (cluster mode)
            if not self.pending or self.pending[0] is not row:
                return  # the queue changed meanwhile (a reload): look again
        self.attempts += 1
        row.attempts += 1
        self.pending.popleft()
        self.in_flight = row
        try:
            ok, retry, what = await channel.attempt(row.payload)
        except BaseException:
            self.pending.appendleft(row)  # cancelled: still to do (after a restart, say)
            raise
        finally:
            self.in_flight = None
        event = row.payload.get("event")
        if ok:
            self.delivered += 1
            log.debug("%s %s: %s for %s delivered", channel.kind, channel.label, event,
                      clients_summary(row.payload))
            outbox.finish(row, "delivered", what)
            return
        log.info("%s %s: attempt %d of %d for %s %s failed: %s", channel.kind, channel.label,
                 row.attempts, channel.max_attempts, event, clients_summary(row.payload), what)
        if not retry or row.attempts >= channel.max_attempts:
            self.failed += 1
            log.warning("%s %s: gave up on %s for %s: %s", channel.kind, channel.label, event,
                        clients_summary(row.payload), what)
            outbox.finish(row, "failed", what)
            return
        if outbox.queues.get(self.name) is not self:
            outbox.finish(row, "orphaned", "its target was removed from the configuration")
            return
        row.last_error = what
        row.next_attempt_at = outbox.wall_clock() + retry_delay(row.attempts - 1)
        self.pending.appendleft(row)
        outbox.stage(lambda: outbox.store.update_delivery(row))

    def stats(self) -> dict[str, Any]:
        return {"kind": self.channel.kind, "target": self.name, "delivered": self.delivered,
                "failed": self.failed, "dropped": self.dropped, "expired": self.expired,
                "attempts": self.attempts, "queued": self.queued}

    def pending_json(self) -> list[dict[str, Any]]:
        return [pending_json(r, r is self.in_flight)
                for r in ([self.in_flight] if self.in_flight else []) + list(self.pending)]


def pending_json(r: OutboxRow, in_flight: bool = False) -> dict[str, Any]:
    """A delivery not yet made, as the delivery log's API shows it."""
    return {"deliveryId": r.delivery_id, "target": r.target, "event": r.payload.get("event"),
            "level": r.payload.get("level"), "clients": clients_summary(r.payload),
            "createdAt": iso(r.created_at), "attempts": r.attempts,
            "nextAttemptAt": iso(r.next_attempt_at), "lastError": r.last_error,
            "outcome": "in_flight" if in_flight else "pending"}


class Outbox:
    """Every target's queue. ``before_attempt`` (cluster mode) is awaited before each
    attempt: it returns once the delivery's row is written to the shared backend."""

    def __init__(self, store: AlertStore, *, wall_clock: Callable[[], float],
                 max_age_seconds: Callable[[], float], keep_per_target: Callable[[], int],
                 before_attempt: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.before_attempt = before_attempt
        # The ids of the latest deliveries finished here (a shared outbox may still list one
        # whose end is being written: it is not taken up again).
        self.finished_ids: dict[str, None] = {}
        self.wall_clock = wall_clock
        self.max_age_seconds = max_age_seconds
        self.keep_per_target = keep_per_target
        self.queues: dict[str, TargetQueue] = {}
        self.stopping = False
        self._nursery: trio.Nursery | None = None
        self._store_warned = False

    # -- bookkeeping ---------------------------------------------------------------------------

    def stage(self, write: Callable[[], None]) -> None:
        try:
            write()
        except StorageUnavailable:
            if not self._store_warned:
                self._store_warned = True
                log.warning("the store is closed: alert deliveries are no longer recorded")

    def finish(self, row: OutboxRow, outcome: str, detail: str | None) -> None:
        self.finished_ids[row.delivery_id] = None
        if len(self.finished_ids) > FINISHED_IDS_KEPT:
            del self.finished_ids[next(iter(self.finished_ids))]
        p = row.payload
        record = DeliveryRecord(row.delivery_id, row.target, str(p.get("event")),
                                str(p.get("level")), clients_summary(p), row.created_at,
                                self.wall_clock(), row.attempts, outcome, detail)
        self.stage(lambda: self.store.finish_delivery(record, self.keep_per_target()))

    # -- queueing ------------------------------------------------------------------------------

    def enqueue(self, payload: dict[str, Any], channels: Iterable[Channel] | None = None,
                *, alert_id: str | None = None) -> list[OutboxRow]:
        """Persist and queue a delivery of the payload for each target that accepts it (or
        the given ones). Never blocks. Returns the deliveries queued."""
        alert_id = alert_id or new_id()
        now = self.wall_clock()
        rows = []
        for q in list(self.queues.values()):
            if channels is not None and q.channel not in channels:
                continue
            if channels is None and not q.channel.accepts(payload):
                continue
            did = new_id()
            row = OutboxRow(did, q.name, now, 0, now, None,
                            {**payload, "alertId": alert_id, "deliveryId": did})
            if q.offer(row):
                self.stage(lambda row=row: self.store.add_delivery(row))  # type: ignore[misc]
                rows.append(row)
            else:
                self.finish(row, "dropped", "the target's queue was full")
        return rows

    def known_ids(self) -> set[str]:
        """Deliveries queued here, in flight, or finished lately."""
        ids = set(self.finished_ids)
        for q in self.queues.values():
            ids.update(r.delivery_id for r in q.pending)
            if q.in_flight is not None:
                ids.add(q.in_flight.delivery_id)
        return ids

    def load(self, rows: Iterable[OutboxRow], *, why: str = "from before the restart") -> None:
        """Deliveries found in the outbox (at start, in the order they were made)."""
        n = 0
        for row in rows:
            q = self.queues.get(row.target)
            if q is None:
                log.warning("an alert queued for %s is dropped: no such target configured "
                            "any more", row.target)
                self.finish(row, "orphaned", "its target is no longer configured")
                continue
            q.pending.append(row)
            q.wake()
            n += 1
        if n:
            log.info("%d queued alert deliveries %s", n, why)

    def set_channels(self, channels: list[Channel]) -> None:
        """Apply the configured targets (at start and on reload)."""
        new: dict[str, TargetQueue] = {}
        started = 0
        for ch in channels:
            q = self.queues.pop(ch.name, None)
            if q is None:
                q = TargetQueue(ch, self)
                started += 1
                if self._nursery is not None:
                    self._nursery.start_soon(q.run)
            else:
                q.channel = ch  # a changed URL or setting applies to what is queued
                q.wake()
            new[ch.name] = q
        removed = list(self.queues.values())
        self.queues = new
        for q in removed:
            if q.in_flight is None:
                q.cancel_scope.cancel()
            else:
                q.wake()  # it records the attempt in flight, then finds itself removed
            for row in q.pending:
                self.finish(row, "orphaned", "its target was removed from the configuration")
            q.pending.clear()
        if started or removed:
            log.info("alerts: %d targets started, %d stopped", started, len(removed))

    # -- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for q in self.queues.values():
                    nursery.start_soon(q.run)
                task_status.started()
                await trio.sleep_forever()  # targets added by a reload start here too
        finally:
            self._nursery = None
            left = sum(q.queued for q in self.queues.values())
            if left:
                log.info("%d alert deliveries stay queued for the next start", left)

    async def aclose(self) -> None:
        """Stop taking deliveries; let attempts in flight finish (at most
        :data:`SHUTDOWN_DRAIN_SECONDS`) so that their outcome is recorded, then stop."""
        self.stopping = True
        for q in self.queues.values():
            if q.in_flight is None:
                q.cancel_scope.cancel()
            q.wake()
        with trio.move_on_after(SHUTDOWN_DRAIN_SECONDS):
            while any(q.in_flight is not None for q in self.queues.values()):
                await trio.sleep(0.01)
        for q in self.queues.values():
            q.cancel_scope.cancel()
