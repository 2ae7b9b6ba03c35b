"""Where a heartbeat goes: the one implementation of every presence change.

backend write (transition, durable on return) → the response → alerts (the policy notes the
transition, never blocks) → feeds (the hub's fan-out, never blocks). Every HTTP path (the Quart routes and the
heartbeat fast path) and the sweeper call these methods, so behaviour and errors are identical
by construction.

The fleet is bounded: a new client beyond ``presence.max_clients`` is refused
(:class:`~rpad.core.errors.FleetFull`, by the view), and one token subject may register at most
``presence.registrations_per_minute`` new clients (:class:`~rpad.core.errors.TooManyRegistrations`;
administrators are not limited). Refusals are counted and logged at most once per
``REFUSAL_LOG_INTERVAL_SECONDS`` while they go on; the operator is warned once when the fleet
reaches ``FLEET_WARNING_SHARE`` of the cap (again after it fell below ``FLEET_REARM_SHARE``).

Error handling: a write the backend applied but could not make durable is announced anyway (the
node's view has changed, and the backend retries the write) and then raised as
:class:`~rpad.core.errors.StorageUnavailable`, so that it is not acknowledged (503). Refusals
(:class:`~rpad.core.errors.RateLimited`, :class:`~rpad.core.errors.UnknownClient`,
:class:`~rpad.core.errors.FleetFull`, :class:`~rpad.core.errors.TooManyRegistrations`) are raised
for a single heartbeat and reported per item in a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..backend.base import Applied, PresenceBackend, PresenceView
from ..core.errors import (
    BackendUnavailable,
    FleetFull,
    RateLimited,
    TooManyRegistrations,
    UnknownClient,
    ValidationFailed,
)
from ..core.model import CLIENT_CONNECTED, CLIENT_DISCONNECTED, Client, Event, HeartbeatOutcome
from ..core.ratelimit import RatePerKey
from ..core.times import iso
from ..core.validation import Heartbeat, Registration, parse_heartbeat

log = logging.getLogger(__name__)

MAX_BATCH_HEARTBEATS = 1000
# The operator is warned when the fleet holds this share of presence.max_clients (the dashboard
# shows a banner from the same share), and warned again once it fell below the second share.
FLEET_WARNING_SHARE = 0.8
FLEET_REARM_SHARE = 0.75
REFUSAL_LOG_INTERVAL_SECONDS = 60.0
FLEET_FULL = "fleet_full"
TOO_MANY_REGISTRATIONS = "too_many_registrations"


class EventSink(Protocol):
    """Where presence events are announced (:class:`~rpad.service.feeds.Feeds`)."""

    def publish_events(self, events: Sequence[Event]) -> None: ...


class AlertSink(Protocol):
    """Where transitions go to become alerts (:class:`~rpad.service.alerts.Alerts`)."""

    def client_transition(self, event: Event) -> None: ...


class Presence:
    def __init__(self, backend: PresenceBackend, feeds: EventSink, alerts: AlertSink, *,
                 wall_clock: Callable[[], float],
                 registrations: RatePerKey | None = None) -> None:
        self.backend = backend
        self.feeds = feeds
        self.alerts = alerts
        self.wall_clock = wall_clock
        # Told when the next timeout may have come forward (a client came online, a
        # registration): the sweeper's poke.
        self.on_deadline_change: Callable[[], None] = lambda: None
        # New clients per token subject (None: not limited).
        self.registrations = registrations
        # Counters (metrics and stats).
        self.heartbeats_by_result: dict[str, int] = {}
        self.transitions: dict[str, int] = {}
        self.registrations_refused: dict[str, int] = {FLEET_FULL: 0, TOO_MANY_REGISTRATIONS: 0}
        # Refusals not logged yet, by reason, with an example; when the next may be logged.
        self._unlogged: dict[str, tuple[int, str]] = {}
        self._log_refusals_at = -float("inf")
        self._fleet_warned = False

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

    def _count_refusal(self, exc: Exception, client_id: str = "",
                       registrar: str | None = None) -> None:
        if isinstance(exc, RateLimited):
            self.count_heartbeat("rate_limited")
        elif isinstance(exc, UnknownClient):
            self.count_heartbeat("unknown_client")
        elif isinstance(exc, FleetFull):
            self.count_heartbeat(FLEET_FULL)
            self._refused_registration(FLEET_FULL, client_id, registrar)
        elif isinstance(exc, TooManyRegistrations):
            self.count_heartbeat(TOO_MANY_REGISTRATIONS)
            self._refused_registration(TOO_MANY_REGISTRATIONS, client_id, registrar)

    # -- the fleet's bounds --------------------------------------------------------------------

    def _registration_wait(self, client_id: str, registrar: str | None,
                           now: float) -> float | None:
        """None when a heartbeat for ``client_id`` from ``registrar`` (a token subject; None
        for administrators) may go ahead; else how long before that subject may register
        another client. Only a heartbeat that would register a client counts (not when the
        fleet is full: that refusal is the view's)."""
        view = self.view
        if (registrar is None or self.registrations is None or not view.auto_register
                or view.full or view.get(client_id) is not None):
            return None
        return self.registrations.take(registrar, now)

    def _refused_registration(self, reason: str, client_id: str, registrar: str | None) -> None:
        self.registrations_refused[reason] = self.registrations_refused.get(reason, 0) + 1
        n, example = self._unlogged.get(reason, (0, ""))
        self._unlogged[reason] = (n + 1, example or f"{client_id!r}"
                                  + (f" from subject {registrar!r}" if registrar else ""))
        now = self.wall_clock()
        if now < self._log_refusals_at:
            return
        self._log_refusals_at = now + REFUSAL_LOG_INTERVAL_SECONDS
        for why, (count, first) in sorted(self._unlogged.items()):
            if why == FLEET_FULL:
                log.warning("refused %d new client%s (first %s): the fleet holds %d clients, "
                            "presence.max_clients is %s; remove clients or raise it", count,
                            "" if count == 1 else "s", first, len(self.view),
                            self.view.max_clients)
            else:
                rate = self.registrations.per_minute if self.registrations else 0
                log.warning("refused %d new client%s (first %s): registering faster than "
                            "presence.registrations_per_minute (%g)", count,
                            "" if count == 1 else "s", first, rate)
        self._unlogged.clear()

    def check_fleet(self) -> None:
        """Warn (once, until it falls back) when the fleet nears ``presence.max_clients``."""
        view = self.view
        cap, n = view.max_clients, len(view)
        if cap is None:
            return
        if n >= cap * FLEET_WARNING_SHARE:
            if not self._fleet_warned:
                self._fleet_warned = True
                log.warning("the fleet holds %d clients, %d%% of presence.max_clients (%d): new "
                            "clients beyond it will be refused; remove clients or raise it",
                            n, int(100 * n / cap), cap)
        elif n < cap * FLEET_REARM_SHARE:
            self._fleet_warned = False

    async def heartbeat(self, hb: Heartbeat, peer: str | None = None, *,
                        registrar: str | None = None) -> dict[str, Any]:
        """Record one heartbeat; returns the response body once it is durable. ``registrar``:
        the token's subject, whose registrations of new clients are rate-limited (None for an
        administrator)."""
        now = self.wall_clock()
        wait = self._registration_wait(hb.client_id, registrar, now)
        if wait is not None:
            exc = TooManyRegistrations(wait)
            self._count_refusal(exc, hb.client_id, registrar)
            raise exc
        try:
            applied = await self.backend.heartbeats([hb], now, peer)
        except BackendUnavailable:
            self.count_heartbeat("backend_unavailable")
            raise
        result = applied.results[0]
        if isinstance(result, Exception):
            self._count_refusal(result, hb.client_id, registrar)
            raise result
        self.count_heartbeat("accepted" if applied.error is None else "storage_error")
        if result.created:
            self.check_fleet()
        self._finish(applied)
        return self._response(result, now)

    async def heartbeat_batch(
        self, items: list[Any], peer: str | None, allowed: Callable[[str], bool], *,
        registrar: str | None = None,
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
            wait = self._registration_wait(hb.client_id, registrar, now)
            if wait is not None:
                self._count_refusal(TooManyRegistrations(wait), hb.client_id, registrar)
                results.append({"index": i, "clientId": hb.client_id, "ok": False,
                                "error": TOO_MANY_REGISTRATIONS,
                                "message": "this token registers new clients too fast",
                                "retryAfterSeconds": round(wait, 3)})
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
        created = False
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
            elif isinstance(result, FleetFull):
                self._count_refusal(result, hb.client_id, registrar)
                results[i] = {"index": i, "clientId": hb.client_id, "ok": False,
                              "error": FLEET_FULL, "message": fleet_full_message(result)}
            elif isinstance(result, Exception):
                raise result
            else:
                results[i] = {"index": i, "ok": True, **self._response(result, now)}
                accepted += 1
                created = created or result.created
        self.count_heartbeat("accepted" if applied.error is None else "storage_error", accepted)
        if created:
            self.check_fleet()
        self._finish(applied)
        return [r for r in results if r is not None]

    # -- registration and removal --------------------------------------------------------------

    async def register(self, reg: Registration) -> tuple[dict[str, Any], bool]:
        """An administrator's registration (not rate-limited; refused when the fleet is full
        and ``reg`` is a new client)."""
        try:
            applied = await self.backend.register(reg, self.wall_clock())
            self.on_deadline_change()  # a shorter timeout brings a deadline forward
        except FleetFull as exc:
            self._refused_registration(FLEET_FULL, reg.client_id, None)
            raise exc from None
        self._finish(applied)
        client, created = applied.results[0]
        if created:
            self.check_fleet()
        return self.view.view(client), created

    async def remove(self, client_id: str) -> dict[str, Any]:
        applied = await self.backend.remove(client_id, self.wall_clock())
        self.check_fleet()
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


def fleet_full_message(exc: FleetFull) -> str:
    return (f"the fleet is at its cap of {exc.max_clients} clients (presence.max_clients): "
            "no new client can register until an administrator removes some or raises the cap")
