"""One term of a node as the cluster's alerting node (:class:`~rpad.backend.base.AlertTerm`).

The presence scripts record every transition (went online, went offline, removed) in their
shard's stream (``<shard>:tx``) in the same atomic step as the transition itself, so nothing
that happened can be missing from it, whichever node it happened on, and each client's
transitions are in the order they happened (one client lives in one shard). The alerting
node reads the streams from where the policy's memory last saw them (the ``cursor`` hash),
and saves the memory and the cursor together with the deliveries its steps queued, in one
fenced write (see :mod:`.alerts`).

At the start of a term:

- if every stream still holds every transition after the saved cursor (Redis tells the
  highest id it ever trimmed: ``max-deleted-entry-id``), the term continues exactly from the
  saved memory and cursor: a handover, or Redis back after an outage, loses nothing and
  repeats nothing;
- otherwise (the first term ever, or a record trimmed past the cursor: more than
  ``TX_KEEP`` transitions of one shard with no alerting node), it starts reading at the
  streams' current ends and hands the service the view as it is then (after a bus round
  trip, so the view holds every change up to those ends), to rebuild from.

Resource handling: none of its own (the store's drainer writes what it stages).
Error handling: while Redis is unreachable the reads are retried every
:data:`RETRY_SECONDS` (no transition can happen meanwhile: presence writes need Redis too).
"""

from __future__ import annotations

import heapq
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ...core.errors import BackendUnavailable
from ...core.jsonenc import dumps
from ...core.model import CLIENT_CONNECTED, CLIENT_DISCONNECTED, CLIENT_REMOVED
from ..base import OutboxRow, TermStart, Transition
from .codec import pairs
from .keys import PRESENCE_SHARDS
from .link import text

if TYPE_CHECKING:
    from .keys import AlertKeys, Keys
    from .link import Link
    from .presence import RedisPresence


class TermHost(Protocol):
    """What a term uses of the node's alert store (:class:`.alerts.RedisAlertStore`, which
    starts the terms: the store imports this module, never the other way round)."""

    link: Link
    keys: Keys
    k: AlertKeys
    presence: RedisPresence
    node_id: str
    # Set when a node recorded transitions (the term waits on the current one).
    transitions_wake: trio.Event

    def rows(self, outbox: Any, order: Any) -> list[OutboxRow]: ...

    def stage(self, fence: str, ops: list[str]) -> None: ...

    async def settled(self, fence: str) -> None: ...

log = logging.getLogger(__name__)

# Transitions read per shard per round trip.
READ_COUNT = 1000
# Read the streams at least this often even when no node said it recorded a transition (a
# wake-up message lost with a bus connection).
POLL_SECONDS = 1.0
RETRY_SECONDS = 1.0
# The policy hash's field holding the grouping's memory (client ids cannot contain a tab).
GROUP_FIELD = "\tgroup"
_TYPES = {"C": CLIENT_CONNECTED, "D": CLIENT_DISCONNECTED, "X": CLIENT_REMOVED}


def stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _info(reply: Any) -> tuple[str, str]:
    """XINFO STREAM → (last-generated-id, max-deleted-entry-id); a missing stream → 0-0."""
    if isinstance(reply, Exception):
        if "no such key" in str(reply):
            return "0-0", "0-0"
        raise reply
    info = dict(pairs(reply))
    return (text(info.get("last-generated-id", "0-0")),
            text(info.get("max-deleted-entry-id", "0-0")))


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """XRANGE's answer → [(id, {field: value})]."""
    out = []
    items = reply.items() if isinstance(reply, dict) else (reply or [])
    for entry_id, values in items:
        if values and isinstance(values[0], list | tuple):
            fields = {text(k): text(v) for k, v in values}
        else:
            flat = list(values or [])
            fields = {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
        out.append((text(entry_id), fields))
    return out


def _transition(fields: Mapping[str, str]) -> Transition:
    return Transition(fields["c"], _TYPES[fields["e"]], float(fields["at"]),
                      fields.get("r") or None, fields.get("p") or None, int(fields.get("v") or 0))


class RedisAlertTerm:
    def __init__(self, store: TermHost, token: int) -> None:
        self.store = store
        self.token = token
        self.fence = f"{store.node_id}|{token}"
        self.cursor: dict[int, str] = {}
        self._moved: set[int] = set()

    async def _batch(self, commands: list[list[str]]) -> list[Any]:
        while True:
            try:
                return await self.store.link.batch(commands)
            except BackendUnavailable:
                await trio.sleep(RETRY_SECONDS)

    async def start(self) -> TermStart:
        store, k = self.store, self.store.k
        shards = range(PRESENCE_SHARDS)
        policy, cursor, outbox, order, *infos = await self._batch([
            ["HGETALL", k.policy], ["HGETALL", k.cursor], ["HGETALL", k.outbox],
            ["ZRANGE", k.order, "0", "-1"],
            *[["XINFO", "STREAM", store.keys.transitions(s)] for s in shards]])
        states = {cid: json.loads(text(v)) for cid, v in pairs(policy)}
        group = states.pop(GROUP_FIELD, None)
        rows = store.rows(outbox, order)
        saved = {int(s): text(v) for s, v in pairs(cursor)}
        ends = [_info(r) for r in infos]
        trimmed = [s for s in shards
                   if stream_id(ends[s][1]) > stream_id(saved.get(s, "0-0"))]
        if saved and not trimmed:
            self.cursor = {s: saved.get(s, "0-0") for s in shards}
            log.info("alert term %d: %d queued deliveries, the policy's memory of %d clients, "
                     "transitions from where it stopped", self.token, len(rows), len(states))
            return TermStart(rows, states, group, None, {})
        # Start at the streams' ends; the view, once the bus has brought every change up to
        # them, is what the service rebuilds from.
        self.cursor = {s: ends[s][0] for s in shards}
        self._moved = set(shards)
        if saved:
            log.warning("alert term %d: transitions of %d presence shards were trimmed before "
                        "they were read (no alerting node for too long): the policy's memory "
                        "is rebuilt from the clients' states", self.token, len(trimmed))
        while True:
            try:
                await store.link.bus_sync()
                break
            except BackendUnavailable:
                await trio.sleep(RETRY_SECONDS)
        presence = store.presence
        clients = list(presence.view)
        versions = {c.client_id: presence.version_of(c.client_id) for c in clients}
        log.info("alert term %d: %d queued deliveries; the policy starts from %d clients' "
                 "states", self.token, len(rows), len(clients))
        return TermStart(rows, states, group, clients, versions)

    async def transitions(self) -> list[Transition]:
        store = self.store
        while True:
            wake = store.transitions_wake = trio.Event()
            found = await self._read()
            if found:
                return found
            with trio.move_on_after(POLL_SECONDS):
                await wake.wait()

    async def _read(self) -> list[Transition]:
        store = self.store
        shards = list(range(PRESENCE_SHARDS))
        replies = await self._batch([["XRANGE", store.keys.transitions(s), "(" + self.cursor[s],
                                      "+", "COUNT", str(READ_COUNT)] for s in shards])
        per_shard: list[list[Transition]] = []
        for s, reply in zip(shards, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            entries = _entries(reply)
            if entries:
                self.cursor[s] = entries[-1][0]
                self._moved.add(s)
                per_shard.append([_transition(f) for _, f in entries])
        # By time across shards; each shard's (so each client's) in its recorded order.
        return list(heapq.merge(*per_shard, key=lambda t: t.at))

    def save_policy(self, states: Mapping[str, dict[str, Any] | None],
                    group: dict[str, Any] | None) -> None:
        ops: list[str] = []
        for cid, state in states.items():
            ops += ["S", cid, dumps(state) if state is not None else ""]
        if group is not None:
            ops += ["S", GROUP_FIELD, dumps(group)]
        for s in sorted(self._moved):
            ops += ["C", str(s), self.cursor[s]]
        self._moved.clear()
        self.store.stage(self.fence, ops)

    async def settled(self) -> None:
        await self.store.settled(self.fence)
