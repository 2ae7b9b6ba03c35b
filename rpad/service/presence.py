"""Where a heartbeat goes: the one implementation of every presence change.

backend write (transition, durable on return) → the response → alerts (the policy notes the
transition, never blocks) → feeds (the hub's fan-out, never blocks). Every HTTP path (the Quart routes and the
heartbeat fast path) and the sweeper call these methods, so behaviour and errors are identical
by construction.

Error handling: a write the backend applied but could not make durable is announced anyway (the
node's view has changed, and the backend retries the write) and then raised as
:class:`~rpad.core.errors.StorageUnavailable`, so that it is not acknowledged (503). Refusals
(:class:`~rpad.core.errors.RateLimited`, :class:`~rpad.core.errors.UnknownClient`) are raised
for a single heartbeat and reported per item in a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..backend.base import Applied, PresenceBackend, PresenceView
from ..core.errors import BackendUnavailable, RateLimited, UnknownClient, ValidationFailed
from ..core.model import CLIENT_CONNECTED, CLIENT_DISCONNECTED, Client, Event, HeartbeatOutcome
from ..core.times import iso
from ..core.validation import Heartbeat, Registration, parse_heartbeat

log = logging.getLogger(__name__)

MAX_BATCH_HEARTBEATS = 1000


class EventSink(Protocol):
    """Where presence events are announced (:class:`~rpad.service.feeds.Feeds`)."""

    def publish_events(self, events: Sequence[Event]) -> None: ...


class AlertSink(Protocol):
    """Where transitions go to become alerts (:class:`~rpad.service.alerts.Alerts`)."""

    def client_transition(self, event: Event) -> None: ...


class Presence:
    def __init__(self, backend: PresenceBackend, feeds: EventSink, alerts: AlertSink, *,
                 wall_clock: Callable[[], float]) -> None:
        self.backend = backend
        self.feeds = feeds
        self.alerts = alerts
        self.wall_clock = wall_clock
        # Told when the next timeout may have come forward (a client came online, a
        # registration): the sweeper's poke.
        self.on_deadline_change: Callable[[], None] = lambda: None
        # Counters (metrics and stats).
        self.heartbeats_by_result: dict[str, int] = {}
        self.transitions: dict[str, int] = {}

    @property
    def view(self) -> PresenceView:
        return self.backend.view

    # -- tokens --------------------------------------------------------------------------------

    def token_generation(self, client_id: str) -> int:
        return self.backend.token_generation(client_id)

    async def revoke_tokens(self, client_id: str) -> int:
        """Invalidate every agent token issued for ``client_id`` so far. Durable on return."""
        return await self.backend.revoke_tokens(client_id)

    # -- announcing ----------------------------------------------------------------------------

    def count_heartbeat(self, result: str, n: int = 1) -> None:
        """Count heartbeats by result (also those refused before they got here: bad token,
        bad body)."""
        self.heartbeats_by_result[result] = self.heartbeats_by_result.get(result, 0) + n

    def _announce(self, applied: Applied[Any]) -> None:
        """Publish the events of a write and queue its alerts (durable or not: the view has
        changed either way)."""
        events = applied.events
        for ev in events:
            if ev.is_transition:
                self.transitions[ev.type] = self.transitions.get(ev.type, 0) + 1
        if not events:
            return
        # The alert policy first: it marks the events of silenced clients (``silenced``,
        # ``silencedUntil``) before dashboards see them.
        for ev in events:
            if ev.type == CLIENT_CONNECTED:
                self.on_deadline_change()
            if ev.type in (CLIENT_CONNECTED, CLIENT_DISCONNECTED):
                log.info("client %s is %s (%s)", ev.client_id,
                         "online" if ev.type == CLIENT_CONNECTED else "offline", ev.reason)
            if ev.is_transition:
                self.alerts.client_transition(ev)
        self.feeds.publish_events(events)

    def _finish(self, applied: Applied[Any]) -> None:
        """Announce, then raise the durability error if there was one."""
        self._announce(applied)
        if applied.error is not None:
            raise applied.error

    # -- heartbeats ----------------------------------------------------------------------------

    def _response(self, outcome: HeartbeatOutcome, now: float) -> dict[str, Any]:
        client = outcome.client
        interval = client.interval_seconds
        timeout = outcome.timeout_seconds
        return {
            "clientId": client.client_id,
            "status": client.status,
            "serverTime": iso(now),
            "timeoutSeconds": timeout,
            "nextHeartbeatInSeconds": interval if interval is not None else max(
                self.view.min_interval_seconds, round(timeout / 3, 3)),
            "clockSkewSeconds": client.clock_skew_seconds,
        }

    def _count_refusal(self, exc: Exception) -> None:
        if isinstance(exc, RateLimited):
            self.count_heartbeat("rate_limited")
        elif isinstance(exc, UnknownClient):
            self.count_heartbeat("unknown_client")

    async def heartbeat(self, hb: Heartbeat, peer: str | None = None) -> dict[str, Any]:
        """Record one heartbeat; returns the response body once it is durable."""
        now = self.wall_clock()
        try:
            applied = await self.backend.heartbeats([hb], now, peer)
        except BackendUnavailable:
            self.count_heartbeat("backend_unavailable")
            raise
        result = applied.results[0]
        if isinstance(result, Exception):
            self._count_refusal(result)
            raise result
        self.count_heartbeat("accepted" if applied.error is None else "storage_error")
        self._finish(applied)
        return self._response(result, now)

    async def heartbeat_batch(
        self, items: list[Any], peer: str | None, allowed: Callable[[str], bool]
    ) -> list[dict[str, Any]]:
        """A gateway's batch: each item validated and recorded on its own; one commit for all.

        Returns one result per item: ``{"index", "clientId", "ok": true, ...response}`` or
        ``{"index", "ok": false, "error", "message", "details"?}``.
        """
        now = self.wall_clock()
        results: list[dict[str, Any] | None] = []
        beats: list[Heartbeat] = []
        positions: list[int] = []
        for i, raw in enumerate(items):
            try:
                hb = parse_heartbeat(raw, prefix=f"heartbeats[{i}].")
            except ValidationFailed as exc:
                self.count_heartbeat("invalid")
                results.append({"index": i, "ok": False, "error": "validation_failed",
                                "message": str(exc), "details": exc.details})
                continue
            if not allowed(hb.client_id):
                self.count_heartbeat("forbidden")
                results.append({"index": i, "clientId": hb.client_id, "ok": False,
                                "error": "forbidden", "message": "not allowed for this client"})
                continue
            results.append(None)
            beats.append(hb)
            positions.append(i)
        try:
            applied = (await self.backend.heartbeats(beats, now, peer) if beats
                       else Applied([], []))
        except BackendUnavailable:
            self.count_heartbeat("backend_unavailable", len(beats))
            raise
        accepted = 0
        for i, hb, result in zip(positions, beats, applied.results, strict=True):
            if isinstance(result, RateLimited):
                self._count_refusal(result)
                results[i] = {"index": i, "clientId": hb.client_id, "ok": False,
                              "error": "rate_limited",
                              "message": "heartbeats from this client are too frequent",
                              "retryAfterSeconds": round(result.retry_after_seconds, 3)}
            elif isinstance(result, UnknownClient):
                self._count_refusal(result)
                results[i] = {"index": i, "clientId": hb.client_id, "ok": False,
                              "error": "unknown_client",
                              "message": "this client is not registered"}
            elif isinstance(result, Exception):
                raise result
            else:
                results[i] = {"index": i, "ok": True, **self._response(result, now)}
                accepted += 1
        self.count_heartbeat("accepted" if applied.error is None else "storage_error", accepted)
        self._finish(applied)
        return [r for r in results if r is not None]

    # -- registration and removal --------------------------------------------------------------

    async def register(self, reg: Registration) -> tuple[dict[str, Any], bool]:
        applied = await self.backend.register(reg, self.wall_clock())
        self.on_deadline_change()  # a shorter timeout brings a deadline forward
        self._finish(applied)
        client, created = applied.results[0]
        return self.view.view(client), created

    async def remove(self, client_id: str) -> dict[str, Any]:
        applied = await self.backend.remove(client_id, self.wall_clock())
        self._finish(applied)
        log.info("client %s removed", client_id)
        data: dict[str, Any] = applied.events[0].data
        return data

    # -- the sweeper's step --------------------------------------------------------------------

    async def sweep(self, *, swept: Callable[[], None] | None = None) -> list[Event]:
        """Mark silent clients offline (``swept()`` is called once the view is marked, before
        the commit). A commit failure is logged, not raised: the state is kept and the backend
        retries it, and the news goes out."""
        applied = await self.backend.sweep(self.wall_clock(), swept=swept)
        if applied.error is not None:
            log.error("could not persist %d offline transitions yet: %s", len(applied.events),
                      applied.error)
        self._announce(applied)
        return applied.events

    async def client(self, client_id: str) -> Client | None:
        """One client as the backend has it now (see PresenceBackend.client)."""
        return await self.backend.client(client_id)

    async def status_history(self, client_id: str,
                             limit: int) -> list[tuple[float, str, str | None]]:
        return await self.backend.status_history(client_id, limit)
