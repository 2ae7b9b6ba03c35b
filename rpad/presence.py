"""Where a heartbeat goes: the one implementation of every state change.

registry (pure transition, events) → store (staged, then awaited until durable) → the
response → publisher (hub fan-out, never blocks) → alert sink (queued, never blocks).

Both the Quart routes and any fast path call these methods, so behaviour and errors are
identical by construction. The publisher and alert sink are small interfaces: the in-process
hub today, a shared backend later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .models import Heartbeat, Registration, ValidationFailed, iso, parse_heartbeat
from .registry import (
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    CLIENT_REMOVED,
    OFFLINE,
    ONLINE,
    Event,
    RateLimited,
    Registry,
    UnknownClient,
)
from .store import StorageUnavailable, Store

log = logging.getLogger(__name__)

MAX_BATCH_HEARTBEATS = 1000


class Publisher(Protocol):
    """The publish side of the hub."""

    def publish_events(self, events: Sequence[Event]) -> None: ...


class AlertSink(Protocol):
    def client_transition(self, event: Event) -> None: ...


class NullPublisher:
    def publish_events(self, events: Sequence[Event]) -> None:
        pass


class NullAlerts:
    def client_transition(self, event: Event) -> None:
        pass


_TRANSITION_STATUS = {CLIENT_CONNECTED: ONLINE, CLIENT_DISCONNECTED: OFFLINE, CLIENT_REMOVED: "removed"}


class Presence:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        *,
        wall_clock: Callable[[], float],
        token_generations: dict[str, int] | None = None,
        publisher: Publisher | None = None,
        alerts: AlertSink | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.wall_clock = wall_clock
        self.publisher: Publisher = publisher or NullPublisher()
        self.alerts: AlertSink = alerts or NullAlerts()
        self._gens: dict[str, int] = dict(token_generations or {})
        # Counters (metrics and stats).
        self.heartbeats_by_result: dict[str, int] = {}
        self.transitions: dict[str, int] = {}

    # -- tokens --------------------------------------------------------------------------------

    def token_generation(self, client_id: str) -> int:
        return self._gens.get(client_id, 0)

    async def revoke_tokens(self, client_id: str) -> int:
        """Invalidate every agent token issued for ``client_id`` so far. Durable on return."""
        gen = self._gens.get(client_id, 0) + 1
        self._gens[client_id] = gen
        self.store.set_token_generation(client_id, gen)
        await self.store.durable()
        log.info("revoked agent tokens of client %s (generation now %d)", client_id, gen)
        return gen

    # -- heartbeats ----------------------------------------------------------------------------

    def count_heartbeat(self, result: str, n: int = 1) -> None:
        """Count heartbeats by result (also those refused before they got here: bad token,
        bad body)."""
        self.heartbeats_by_result[result] = self.heartbeats_by_result.get(result, 0) + n

    def _stage(self, events: Sequence[Event]) -> None:
        for ev in events:
            if ev.is_transition:
                if ev.type != CLIENT_REMOVED:
                    self.store.add_history(ev.client_id, ev.at, _TRANSITION_STATUS[ev.type], ev.reason)
                self.transitions[ev.type] = self.transitions.get(ev.type, 0) + 1

    def _emit(self, events: Sequence[Event]) -> None:
        if not events:
            return
        self.publisher.publish_events(events)
        for ev in events:
            if ev.type in (CLIENT_CONNECTED, CLIENT_DISCONNECTED):
                log.info(
                    "client %s is %s (%s)", ev.client_id,
                    "online" if ev.type == CLIENT_CONNECTED else "offline", ev.reason,
                )
                self.alerts.client_transition(ev)

    def _record(self, hb: Heartbeat, now: float, peer: str | None) -> tuple[dict[str, Any], list[Event]]:
        """The synchronous part of a heartbeat: transition and staging. Raises UnknownClient,
        RateLimited, StorageUnavailable (store closed)."""
        try:
            outcome = self.registry.heartbeat(hb, now, peer_address=peer)
        except RateLimited:
            self.count_heartbeat("rate_limited")
            raise
        except UnknownClient:
            self.count_heartbeat("unknown_client")
            raise
        client = outcome.client
        self.store.put_client(client)
        self._stage(outcome.events)
        interval = client.interval_seconds
        timeout = outcome.timeout_seconds
        response = {
            "clientId": client.client_id,
            "status": client.status,
            "serverTime": iso(now),
            "timeoutSeconds": timeout,
            "nextHeartbeatInSeconds": interval if interval is not None else max(
                self.registry.min_interval_seconds, round(timeout / 3, 3)),
            "clockSkewSeconds": client.clock_skew_seconds,
        }
        return response, outcome.events

    async def heartbeat(self, hb: Heartbeat, peer: str | None = None) -> dict[str, Any]:
        """Record one heartbeat; returns the response body once it is durable."""
        response, events = self._record(hb, self.wall_clock(), peer)
        try:
            await self.store.durable()
        except StorageUnavailable:
            # Not acknowledged (503), but the registry has changed and the store retries the
            # write: announce the transition now, or it would never be announced at all.
            self.count_heartbeat("storage_error")
            self._emit(events)
            raise
        self.count_heartbeat("accepted")
        self._emit(events)
        return response

    async def heartbeat_batch(
        self, items: list[Any], peer: str | None, allowed: Callable[[str], bool]
    ) -> list[dict[str, Any]]:
        """A gateway's batch: each item validated and recorded on its own; one commit for all.

        Returns one result per item: ``{"index", "clientId", "ok": true, ...response}`` or
        ``{"index", "ok": false, "error", "message", "details"?}``.
        """
        now = self.wall_clock()
        results: list[dict[str, Any]] = []
        all_events: list[Event] = []
        accepted: list[int] = []
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
            try:
                response, events = self._record(hb, now, peer)
            except RateLimited as exc:
                results.append({"index": i, "clientId": hb.client_id, "ok": False,
                                "error": "rate_limited",
                                "message": "heartbeats from this client are too frequent",
                                "retryAfterSeconds": round(exc.retry_after_seconds, 3)})
                continue
            except UnknownClient:
                results.append({"index": i, "clientId": hb.client_id, "ok": False,
                                "error": "unknown_client",
                                "message": "this client is not registered"})
                continue
            results.append({"index": i, "ok": True, **response})
            accepted.append(i)
            all_events.extend(events)
        if accepted:
            try:
                await self.store.durable()
            except StorageUnavailable:
                self.count_heartbeat("storage_error", len(accepted))
                self._emit(all_events)  # as in heartbeat(): the registry has changed
                raise
        self.count_heartbeat("accepted", len(accepted))
        self._emit(all_events)
        return results

    # -- registration and removal --------------------------------------------------------------

    async def register(self, reg: Registration) -> tuple[dict[str, Any], bool]:
        now = self.wall_clock()
        client, events, created = self.registry.register(reg, now)
        self.store.put_client(client)
        self._stage(events)
        try:
            await self.store.durable()
        finally:  # announced even on StorageUnavailable: the registry has changed
            self._emit(events)
        return self.registry.view(client), created

    async def remove(self, client_id: str) -> dict[str, Any]:
        now = self.wall_clock()
        events = self.registry.remove(client_id, now)
        self.store.delete_client(client_id)
        self._stage(events)
        try:
            await self.store.durable()
        finally:  # announced even on StorageUnavailable: the registry has changed
            self._emit(events)
        log.info("client %s removed", client_id)
        return events[0].data

    # -- the sweeper's step --------------------------------------------------------------------

    async def sweep(self) -> list[Event]:
        events = self.registry.sweep(self.wall_clock())
        if not events:
            return events
        for ev in events:
            client = self.registry.get(ev.client_id)
            if client is not None:
                self.store.put_client(client)
        self._stage(events)
        try:
            await self.store.durable()
        except StorageUnavailable as exc:
            # The state is kept in memory and the store retries the batch; the news goes out.
            log.error("could not persist %d offline transitions yet: %s", len(events), exc)
        self._emit(events)
        return events
