"""The Redis presence backend: every node shares one truth, each keeps a view of it.

Writes run Lua scripts (``lua/heartbeat.lua`` and the others) that apply a transition
atomically in Redis and announce the client's new state on the bus; the node that wrote
installs the state from the script's answer at once, every node (itself included) from the
bus. A state is installed only if its version is newer than the one in the view, so the order
in which the two arrive does not matter. Reads (lists, pushes, metrics) come from the view.

Heartbeats are grouped the way the SQLite store groups commits: while one round trip is in
flight the next heartbeats wait, then all of them go in one pipelined round trip (one script
call per presence shard). With Redis's ``appendfsync always``, Redis has the write on disk
before it answers, so a heartbeat is durable when its response is sent.

The sweep runs on one node at a time: the holder of the sweep lease (:mod:`.lease`: a key
with a TTL, renewed every few seconds; a new holder gets a new fencing token).
Each shard remembers the highest token that swept it and refuses an older one, so a holder
that was paused past its lease cannot sweep after its successor. Nobody is swept during the
start-up grace, nor for ``presence.startup_grace_seconds`` after Redis was unreachable from
this node (the heartbeats that failed meanwhile were the cluster's fault, not the agents').

Resource handling: :meth:`RedisPresence.run` loads the view, then runs the heartbeat grouper
and the lease until cancelled (releasing the lease when it stops).
Error handling: writes raise :class:`~rpad.core.errors.BackendUnavailable` (nothing written;
the caller answers 503); the sweep and the lease never raise for an unreachable Redis (they
try again on their next round).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ...config import PresenceConfig
from ...core.errors import BackendUnavailable, FleetFull, RateLimited, UnknownClient
from ...core.model import (
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    CLIENT_REMOVED,
    CLIENT_STATUS_UPDATE,
    HEARTBEAT_RECEIVED,
    OFFLINE,
    ONLINE,
    REASON_HEARTBEAT,
    REASON_REGISTERED,
    REASON_REMOVED,
    REASON_SHUTDOWN,
    REASON_TIMEOUT,
    Client,
    Event,
    HeartbeatOutcome,
)
from ...core.registry import Registry
from ...core.times import iso
from ...core.validation import Heartbeat, Registration
from ..base import Applied, BeatResult
from . import codec
from .keys import PRESENCE_SHARDS, Keys, shard_of
from .lease import Lease
from .link import Link, text
from .scripts import SCRIPTS

log = logging.getLogger(__name__)

SWEEP_LIMIT_PER_SHARD = 1000
LOAD_CHUNK = 500
MAX_GROUP_BEATS = 5000
_EVENT_OF = {"C": (CLIENT_CONNECTED, REASON_HEARTBEAT), "D": (CLIENT_DISCONNECTED, REASON_SHUTDOWN),
             "U": (CLIENT_STATUS_UPDATE, None)}


class _Pending:
    __slots__ = ("beats", "done", "error", "now", "peer", "results")

    def __init__(self, beats: Sequence[Heartbeat], now: float, peer: str | None) -> None:
        self.beats = beats
        self.now = now
        self.peer = peer
        self.done = trio.Event()
        self.results: list[Any] = []
        self.error: BackendUnavailable | None = None


class RedisPresence:
    """:class:`~rpad.backend.base.PresenceBackend` shared by every node through Redis."""

    def __init__(self, link: Link, keys: Keys, registry: Registry, cfg: PresenceConfig, *,
                 node_id: str, wall_clock: Callable[[], float]) -> None:
        self.link = link
        self.keys = keys
        self.registry = registry
        self.node_id = node_id
        self.wall_clock = wall_clock
        self.history_per_client = cfg.history_per_client
        self.grace_seconds = cfg.grace_seconds
        self.lease = Lease(link, keys.lease, keys.lease_tokens, node_id=node_id, role="sweep")
        self.lease.on_change.append(self._lease_changed)
        # Called when this node takes the sweep lease (the daemon's sweeper.poke): whoever is
        # due is swept at once, not at the sweeper's next upper bound.
        self.on_lease: Callable[[], None] | None = None
        self.sweeps_fenced = 0
        self._versions: dict[str, int] = {}
        self._gens: dict[str, int] = {}
        # What the agents whose control channel is on this node advertise (not shared: the
        # console reaches an agent through the node that holds its channel).
        self._capabilities: dict[str, dict[str, Any]] = {}
        self._pending: list[_Pending] = []
        self._wake = trio.Event()
        self.beats_sent = 0
        self.groups_sent = 0
        link.on_message("p", self._on_state)
        link.on_message("x", self._on_removed)
        link.on_message("g", self._on_generation)
        link.on_recovered(self._recovered)

    @property
    def view(self) -> Registry:
        return self.registry

    def reconfigure(self, cfg: PresenceConfig) -> None:
        self.registry.default_timeout_seconds = cfg.heartbeat_timeout_seconds
        self.registry.min_interval_seconds = cfg.min_interval_seconds
        self.registry.auto_register = cfg.registration == "auto"
        self.registry.max_clients = cfg.max_clients
        self.history_per_client = cfg.history_per_client
        self.grace_seconds = cfg.grace_seconds

    # -- the view --------------------------------------------------------------------------------

    def _install(self, flat: codec.Flat) -> Client:
        """Put a state from Redis into the view unless the view has a newer one; returns the
        client as the view now has it."""
        client, version = codec.decode(flat)
        if version > self._versions.get(client.client_id, -1):
            self._versions[client.client_id] = version
            client.capabilities = self._capabilities.get(client.client_id)
            self.registry.put(client)
            return client
        current = self.registry.get(client.client_id)
        return current if current is not None else client

    def set_capabilities(self, client_id: str, capabilities: dict[str, Any] | None) -> bool:
        if capabilities is None:
            self._capabilities.pop(client_id, None)
        else:
            self._capabilities[client_id] = capabilities
        return self.registry.set_capabilities(client_id, capabilities)

    def _on_state(self, fields: list[str]) -> None:
        import json

        self._install(json.loads("\n".join(fields[1:])))

    def _on_removed(self, fields: list[str]) -> None:
        client_id = fields[1]
        self._versions.pop(client_id, None)
        self.registry.drop(client_id)

    def _on_generation(self, fields: list[str]) -> None:
        client_id, gen = fields[1], int(fields[2])
        self._gens[client_id] = max(gen, self._gens.get(client_id, 0))

    async def load(self) -> int:
        """Read every client and token generation from Redis into the view (at start and after
        Redis was unreachable); clients gone from Redis leave the view. Returns how many."""
        link, keys = self.link, self.keys
        id_sets = await link.batch([["SMEMBERS", keys.shard_keys(s)[2]]
                                    for s in range(PRESENCE_SHARDS)])
        ids = [text(i) for members in id_sets for i in (members or [])]
        seen: set[str] = set()
        for start in range(0, len(ids), LOAD_CHUNK):
            chunk = ids[start:start + LOAD_CHUNK]
            flats = await link.batch([["HGETALL", keys.client(i)] for i in chunk])
            for client_id, flat in zip(chunk, flats, strict=True):
                if isinstance(flat, dict):  # RESP3 map
                    flat = [x for kv in flat.items() for x in kv]
                if flat:
                    self._install(flat)
                    seen.add(client_id)
        for client in list(self.registry):
            if client.client_id not in seen:
                self._versions.pop(client.client_id, None)
                self.registry.drop(client.client_id)
        gens = await link.call("HGETALL", keys.generations)
        pairs = gens.items() if isinstance(gens, dict) else zip(gens[::2], gens[1::2], strict=True)
        self._gens = {text(k): int(text(v)) for k, v in pairs}
        return len(seen)

    async def _recovered(self) -> None:
        n = await self.load()
        self.registry.grace_until = max(self.registry.grace_until,
                                        self.wall_clock() + self.grace_seconds)
        log.info("reloaded %d clients from Redis; nobody is marked offline for %.0f s "
                 "(heartbeats failed while Redis was unreachable)", n, self.grace_seconds)

    # -- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        n = await self.load()
        if n:
            self.registry.grace_until = self.wall_clock() + self.grace_seconds
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_groups)
            await nursery.start(self.lease.run)
            task_status.started()
            await trio.sleep_forever()

    async def _send_groups(self) -> None:
        """The grouper: everything that waited during one round trip goes in the next."""
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                pending, self._pending = self._pending, []
                while pending:
                    group: list[_Pending] = []
                    size = 0
                    while pending and (not group or size + len(pending[0].beats) <= MAX_GROUP_BEATS):
                        p = pending.pop(0)
                        group.append(p)
                        size += len(p.beats)
                    await self._send(group)
        finally:
            for p in self._pending:
                p.error = BackendUnavailable("rpad is stopping")
                p.done.set()

    async def _send(self, group: list[_Pending]) -> None:
        reg = self.registry
        by_shard: dict[int, list[tuple[_Pending, int]]] = {}
        for p in group:
            for i, hb in enumerate(p.beats):
                by_shard.setdefault(shard_of(hb.client_id), []).append((p, i))
        commands = []
        order = []
        head = [repr(reg.min_interval_seconds), "1" if reg.auto_register else "0"]
        for s, items in by_shard.items():
            shard = self.keys.shard(s)
            args: list[str | bytes] = [*head, f"{shard}:c:", f"{shard}:h:",
                                       str(self.history_per_client), self.link.bus_channel,
                                       self.node_id]
            for p, i in items:
                hb = p.beats[i]
                skew = round(hb.timestamp - p.now, 3) if hb.timestamp is not None else None
                args += [hb.client_id, hb.status, codec.opt(hb.version),
                         codec.opt(hb.ip_address if hb.ip_address is not None else p.peer),
                         codec.opt(hb.os_type), codec.opt(hb.name),
                         codec.opt(hb.interval_seconds), codec.opt(hb.metrics),
                         codec.opt(hb.metadata), codec.opt(skew), repr(p.now)]
            commands.append(self.link.script_command(SCRIPTS["heartbeat"],
                                                     self.keys.shard_keys(s), args))
            order.append(items)
        for p in group:
            p.results = [None] * len(p.beats)
        try:
            answers = await self.link.batch(commands)
            self.groups_sent += 1
            self.beats_sent += sum(len(p.beats) for p in group)
            for items, answer in zip(order, answers, strict=True):
                if isinstance(answer, Exception):
                    raise answer
                for (p, i), item in zip(items, answer, strict=True):
                    p.results[i] = item
        except BackendUnavailable as exc:
            for p in group:
                p.error = exc
        finally:
            for p in group:
                p.done.set()

    # -- writes ----------------------------------------------------------------------------------

    async def heartbeats(self, beats: Sequence[Heartbeat], now: float,
                         peer: str | None) -> Applied[BeatResult]:
        if not beats:
            return Applied([], [])
        reg = self.registry
        if reg.full and reg.auto_register:
            # presence.max_clients, checked against this node's view of the whole cluster
            # (so nodes registering at the same moment may pass it by what is in flight).
            refused = [reg.get(hb.client_id) is None for hb in beats]
            if any(refused):
                sent = [hb for hb, no in zip(beats, refused, strict=True) if not no]
                applied = await self.heartbeats(sent, now, peer)
                rest = iter(applied.results)
                cap = reg.max_clients or 0
                return Applied([FleetFull(cap) if no else next(rest) for no in refused],
                               applied.events, applied.error)
        p = _Pending(beats, now, peer)
        self._pending.append(p)
        self._wake.set()
        await p.done.wait()
        if p.error is not None:
            raise p.error
        reg = self.registry
        results: list[BeatResult] = []
        events: list[Event] = []
        for hb, item in zip(beats, p.results, strict=True):
            kind = text(item[0])
            if kind == "rate":
                results.append(RateLimited(float(text(item[1]))))
                continue
            if kind == "unknown":
                results.append(UnknownClient(hb.client_id))
                continue
            ev, was, flat = text(item[1]), text(item[2]), item[3]
            client = self._install(flat)
            if ev:
                type_, reason = _EVENT_OF[ev]
                prev = was if ev in ("C", "D") else None
                events.append(reg.event(type_, client, now, reason, prev))
            events.append(Event(HEARTBEAT_RECEIVED, client.client_id, now, {
                "clientId": client.client_id, "receivedAt": iso(now),
                "reportedStatus": client.reported_status,
                "latestMetrics": client.latest_metrics}))
            results.append(HeartbeatOutcome(client, events[-2:] if ev else events[-1:],
                                            reg.timeout_of(client), int(item[4]) == 1))
        return Applied(results, events)

    async def register(self, reg: Registration, now: float) -> Applied[tuple[Client, bool]]:
        view = self.registry
        if view.full and view.get(reg.client_id) is None:  # as in heartbeats()
            raise FleetFull(view.max_clients or 0)
        s = shard_of(reg.client_id)
        shard = self.keys.shard(s)
        created, flat = await self.link.script(SCRIPTS["register"], self.keys.shard_keys(s), [
            reg.client_id, repr(now), f"{shard}:c:", self.link.bus_channel, self.node_id,
            codec.opt(reg.name), codec.opt(reg.tags), codec.opt(reg.heartbeat_timeout_seconds),
            codec.opt(reg.metadata)])
        client = self._install(flat)
        was_created = int(created) == 1
        event = self.registry.event(CLIENT_STATUS_UPDATE, client, now,
                                    REASON_REGISTERED if was_created else None)
        return Applied([(client, was_created)], [event])

    async def remove(self, client_id: str, now: float) -> Applied[Client]:
        s = shard_of(client_id)
        shard = self.keys.shard(s)
        flat = await self.link.script(SCRIPTS["remove"], self.keys.shard_keys(s), [
            client_id, f"{shard}:c:", f"{shard}:h:", self.link.bus_channel, self.node_id,
            repr(now)])
        if not flat:
            raise UnknownClient(client_id)
        client, _ = codec.decode(flat)
        self._versions.pop(client_id, None)
        self.registry.drop(client_id)
        client.status = OFFLINE
        event = self.registry.event(CLIENT_REMOVED, client, now, REASON_REMOVED)
        return Applied([client], [event])

    # -- the sweep -------------------------------------------------------------------------------

    @property
    def lease_token(self) -> int | None:
        return self.lease.token

    @property
    def lease_holder(self) -> str | None:
        return self.lease.holder

    async def hold_lease(self) -> bool:
        """Take or renew the sweep lease; True while this node holds it."""
        return await self.lease.hold()

    def _lease_changed(self, token: int | None) -> None:
        if token is not None and self.on_lease is not None:
            self.on_lease()

    async def sweep(self, now: float, *,
                    swept: Callable[[], None] | None = None) -> Applied[Client]:
        try:
            return await self._sweep(now)
        finally:
            if swept is not None:
                swept()

    async def _sweep(self, now: float) -> Applied[Client]:
        token = self.lease_token
        if token is None or not self.link.up or now < self.registry.grace_until:
            return Applied([], [])
        reg = self.registry
        clients: list[Client] = []
        events: list[Event] = []
        shards = list(range(PRESENCE_SHARDS))
        try:
            while shards:
                commands = []
                for s in shards:
                    base = self.keys.shard(s)
                    commands.append(self.link.script_command(
                        SCRIPTS["sweep"], self.keys.shard_keys(s),
                        [repr(now), repr(reg.default_timeout_seconds), str(token),
                         str(SWEEP_LIMIT_PER_SHARD), f"{base}:c:", f"{base}:h:",
                         str(self.history_per_client), self.link.bus_channel, self.node_id]))
                answers = await self.link.batch(commands)
                again = []
                for s, answer in zip(shards, answers, strict=True):
                    if isinstance(answer, Exception):
                        raise answer
                    if text(answer[0]) == "fenced":
                        self.sweeps_fenced += 1
                        self.lease.drop()
                        return Applied(clients, events)
                    if int(answer[1]):
                        again.append(s)
                    for flat in answer[2:]:
                        client = self._install(flat)
                        clients.append(client)
                        events.append(reg.event(CLIENT_DISCONNECTED, client, now,
                                                REASON_TIMEOUT, ONLINE))
                shards = again
        except BackendUnavailable:
            pass  # what was swept is announced; the rest waits for the next round
        return Applied(clients, events)

    def next_deadline(self) -> float | None:
        """From the view when this node sweeps; None otherwise (the lease holder does; this
        node's sweeper is poked when it takes the lease)."""
        if self.lease_token is None:
            return None
        return self.registry.next_deadline()

    # -- reads -----------------------------------------------------------------------------------

    async def client(self, client_id: str) -> Client | None:
        """Read through: the client's hash from Redis, installed in the view (a heartbeat
        that another node answered a moment ago may not have reached this node's view yet)."""
        try:
            flat = await self.link.call("HGETALL", self.keys.client(client_id))
        except BackendUnavailable:
            return self.registry.get(client_id)  # the last view (health says it is stale)
        if isinstance(flat, dict):
            flat = [x for kv in flat.items() for x in kv]
        if not flat:
            if self.registry.get(client_id) is not None:
                self._versions.pop(client_id, None)
                self.registry.drop(client_id)
            return None
        return self._install(flat)

    async def status_history(self, client_id: str,
                             limit: int) -> list[tuple[float, str, str | None]]:
        entries = await self.link.call("LRANGE", self.keys.history(client_id), "0",
                                       str(max(0, limit - 1)))
        out: list[tuple[float, str, str | None]] = []
        for entry in entries or []:
            at, status, reason = text(entry).split("|", 2)
            out.append((float(at), status, reason or None))
        return out

    # -- token generations -----------------------------------------------------------------------

    def version_of(self, client_id: str) -> int:
        """The version of the client's state in the view (0: none)."""
        return self._versions.get(client_id, 0)

    def token_generation(self, client_id: str) -> int:
        return self._gens.get(client_id, 0)

    async def revoke_tokens(self, client_id: str) -> int:
        gen = int(await self.link.script(SCRIPTS["generation"], [self.keys.generations],
                                         [client_id, self.link.bus_channel, self.node_id]))
        self._gens[client_id] = max(gen, self._gens.get(client_id, 0))
        log.info("revoked agent tokens of client %s (generation now %d)", client_id, gen)
        return gen
