"""The local presence backend: the registry in memory, durable in SQLite.

A write runs the registry's transition (synchronously, so concurrent requests see each other's
changes at once), stages the changed rows and the status-history entries of its transitions in
the store, and awaits the group commit that makes them durable.

Resource handling: :meth:`LocalPresence.run` runs the store's committer until cancelled; the
daemon opens the store before and closes it (final commit) after.

Error handling: a commit that fails leaves the view changed and the writes staged for the next
commit; the result's ``error`` says so (the caller announces the events and answers 503).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ...config import PresenceConfig
from ...core.errors import FleetFull, RateLimited, StorageUnavailable, UnknownClient
from ...core.model import CLIENT_CONNECTED, CLIENT_DISCONNECTED, OFFLINE, ONLINE, Client, Event
from ...core.registry import Registry
from ...core.validation import Heartbeat, Registration
from ..base import Applied, BeatResult, MetricsHistory
from .store import Store

log = logging.getLogger(__name__)

# The status recorded in a client's history for each kind of transition.
_HISTORY_STATUS = {CLIENT_CONNECTED: ONLINE, CLIENT_DISCONNECTED: OFFLINE}


class LocalPresence:
    """:class:`~rpad.backend.base.PresenceBackend` for one node."""

    def __init__(self, registry: Registry, store: Store,
                 token_generations: dict[str, int] | None = None, *,
                 history: MetricsHistory | None = None) -> None:
        self.registry = registry
        self.store = store
        self._gens: dict[str, int] = dict(token_generations or {})
        # Each heartbeat's metrics are staged there too (the same group commit).
        self.history = history

    @property
    def view(self) -> Registry:
        return self.registry

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.store.run_committer(task_status=task_status)

    def reconfigure(self, cfg: PresenceConfig) -> None:
        self.registry.default_timeout_seconds = cfg.heartbeat_timeout_seconds
        self.registry.min_interval_seconds = cfg.min_interval_seconds
        self.registry.auto_register = cfg.registration == "auto"
        self.registry.max_clients = cfg.max_clients
        self.store.history_per_client = cfg.history_per_client

    def set_capabilities(self, client_id: str, capabilities: dict[str, Any] | None) -> bool:
        return self.registry.set_capabilities(client_id, capabilities)

    # -- writes --------------------------------------------------------------------------------

    def _stage(self, clients: Sequence[Client], events: Sequence[Event]) -> None:
        """Stage rows and history; raises StorageUnavailable when the store is closed."""
        for client in clients:
            self.store.put_client(client)
        for ev in events:
            status = _HISTORY_STATUS.get(ev.type)
            if status is not None:
                self.store.add_history(ev.client_id, ev.at, status, ev.reason)

    async def _durable(self, results: list[Any], events: list[Event]) -> Applied[Any]:
        try:
            await self.store.durable()
        except StorageUnavailable as exc:
            return Applied(results, events, exc)
        return Applied(results, events)

    async def heartbeats(self, beats: Sequence[Heartbeat], now: float,
                         peer: str | None) -> Applied[BeatResult]:
        results: list[BeatResult] = []
        events: list[Event] = []
        error: StorageUnavailable | None = None
        for hb in beats:
            try:
                outcome = self.registry.heartbeat(hb, now, peer_address=peer)
            except (RateLimited, UnknownClient, FleetFull) as exc:
                results.append(exc)
                continue
            results.append(outcome)
            events.extend(outcome.events)
            try:
                self._stage([outcome.client], outcome.events)
                if hb.metrics and self.history is not None:
                    self.history.record(hb.client_id, now, hb.metrics)
            except StorageUnavailable as exc:
                error = exc
        if error is not None:
            return Applied(results, events, error)
        if len(events) == 0:
            return Applied(results, events)  # every item refused: nothing to wait for
        return await self._durable(results, events)

    async def register(self, reg: Registration, now: float) -> Applied[tuple[Client, bool]]:
        client, events, created = self.registry.register(reg, now)
        try:
            self._stage([client], events)
        except StorageUnavailable as exc:
            return Applied([(client, created)], events, exc)
        return await self._durable([(client, created)], events)

    async def remove(self, client_id: str, now: float) -> Applied[Client]:
        client = self.registry.get(client_id)
        events = self.registry.remove(client_id, now)  # raises UnknownClient
        assert client is not None
        if self.history is not None:
            self.history.forget(client_id)
        try:
            self.store.delete_client(client_id)
        except StorageUnavailable as exc:
            return Applied([client], events, exc)
        return await self._durable([client], events)

    async def sweep(self, now: float, *,
                    swept: Callable[[], None] | None = None) -> Applied[Client]:
        events = self.registry.sweep(now)
        if not events:
            if swept is not None:
                swept()
            return Applied([], [])
        clients = [c for c in (self.registry.get(ev.client_id) for ev in events) if c is not None]
        try:
            self._stage(clients, events)
        except StorageUnavailable as exc:
            return Applied(clients, events, exc)
        finally:
            if swept is not None:
                swept()
        return await self._durable(clients, events)

    def next_deadline(self) -> float | None:
        return self.registry.next_deadline()

    # -- reads ---------------------------------------------------------------------------------

    async def client(self, client_id: str) -> Client | None:
        return self.registry.get(client_id)

    async def status_history(self, client_id: str,
                             limit: int) -> list[tuple[float, str, str | None]]:
        return await self.store.history(client_id, limit)

    # -- token generations ---------------------------------------------------------------------

    def token_generation(self, client_id: str) -> int:
        return self._gens.get(client_id, 0)

    async def revoke_tokens(self, client_id: str) -> int:
        gen = self._gens.get(client_id, 0) + 1
        self._gens[client_id] = gen
        self.store.set_token_generation(client_id, gen)
        await self.store.durable()
        log.info("revoked agent tokens of client %s (generation now %d)", client_id, gen)
        return gen

