"""The presence state machine: every client of this node's view, in memory.

Pure: no I/O, no clock of its own. Every method takes ``now`` (wall-clock epoch seconds) and
returns the events it caused; the caller persists and publishes them. That makes every
transition testable with exact times and no server. The rules of being online are those of
:mod:`rpad.core.model`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import FleetFull, RateLimited, UnknownClient
from .jsonenc import dumps
from .model import (
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
from .times import iso
from .validation import Heartbeat, Registration

# A lane of the sweep index: (registered timeout, declared interval).
_LaneKey = tuple[float | None, float | None]

# Removals remembered for delta pushes (``push.mode = "delta"``).
MAX_REMOVALS_KEPT = 10_000


class ChangeJournal:
    """Ids of the clients changed (insertion-ordered, each once) and removed since the last
    :meth:`take`; a client removed and added again is in both."""

    __slots__ = ("changed", "removed")

    def __init__(self) -> None:
        self.changed: dict[str, None] = {}
        self.removed: set[str] = set()

    def take(self) -> tuple[list[str], set[str]]:
        changed, removed = list(self.changed), self.removed
        self.changed, self.removed = {}, set()
        return changed, removed


class Registry:
    """All clients, in memory. The single source of truth while rpad runs."""

    def __init__(
        self,
        *,
        default_timeout_seconds: float,
        min_interval_seconds: float,
        auto_register: bool,
        grace_until: float = 0.0,
        max_clients: int | None = None,
    ) -> None:
        self.default_timeout_seconds = default_timeout_seconds
        self.min_interval_seconds = min_interval_seconds
        self.auto_register = auto_register
        # Before this wall-clock time the sweeper marks nobody offline (rpad just restarted).
        self.grace_until = grace_until
        self._clients: dict[str, Client] = {}
        self._online = 0
        self._revision = 0
        self._next_order = 0
        # The sweep's index: online clients in lanes, one per timeout rule (the registered
        # timeout and the declared interval: the clients whose effective timeout is the same
        # function of the default), each lane in last-heartbeat order. Heartbeats come in
        # wall-clock order, so moving a client to the end of its lane at each one keeps the
        # lane sorted, and so sorted by deadline: a sweep reads only the front of each lane,
        # and the next deadline is the earliest front's. A wall clock stepped back breaks the
        # order; the next sweep then scans every client (the plain sweep) and rebuilds it.
        self._lanes: dict[_LaneKey, OrderedDict[str, Client]] = {}
        self._lane_of: dict[str, _LaneKey] = {}
        self._latest_beat = -math.inf
        self._index_valid = True
        # (revision, client id) of recent removals, for delta pushes; the oldest are let go
        # past MAX_REMOVALS_KEPT (a delta from before then is refused: send the full list).
        self._removals: list[tuple[int, str]] = []
        self._removals_kept_since = 0
        # Journals of changed and removed clients (see watch_changes).
        self._journals: list[ChangeJournal] = []
        # New clients beyond this many are refused (FleetFull); None: no cap.
        self._max_clients = max_clients

    @property
    def max_clients(self) -> int | None:
        return self._max_clients

    @max_clients.setter
    def max_clients(self, value: int | None) -> None:
        # The client lists carry the cap: a new one is news for the pusher.
        if value != self._max_clients:
            self._max_clients = value
            self._revision += 1

    def _check_room(self) -> None:
        if self._max_clients is not None and len(self._clients) >= self._max_clients:
            raise FleetFull(self._max_clients)

    @property
    def full(self) -> bool:
        """Whether a new client would be refused."""
        return self._max_clients is not None and len(self._clients) >= self._max_clients

    # -- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[Client]:
        return iter(self._clients.values())

    def get(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    @property
    def online_count(self) -> int:
        return self._online

    @property
    def revision(self) -> int:
        return self._revision

    def view(self, client: Client) -> dict[str, Any]:
        return client.view(self.default_timeout_seconds)

    def views(self) -> list[dict[str, Any]]:
        t = self.default_timeout_seconds
        return [c.view(t) for c in self._clients.values()]

    @property
    def default_timeout_seconds(self) -> float:
        return self._default_timeout_seconds

    @default_timeout_seconds.setter
    def default_timeout_seconds(self, value: float) -> None:
        # Every view shows its effective timeout: a new default invalidates cached JSON.
        self._default_timeout_seconds = value
        self._view_generation = getattr(self, "_view_generation", 0) + 1

    def view_json(self, client: Client) -> str:
        """The client view as a JSON string, re-serialized only when the client changed."""
        key = (client.revision, self._view_generation)
        if client._json_key != key:
            client._json = dumps(client.view(self._default_timeout_seconds))
            client._json_key = key
        return client._json

    def _cap_json(self) -> str:
        return "" if self._max_clients is None else f',"maxClients":{int(self._max_clients)}'

    def servers_json(self) -> str:
        """``{"servers": [client view, ...], "maxClients": N}`` as a JSON string, built from
        cached per-client fragments: a push re-serializes only the clients that changed since
        the last one."""
        vj = self.view_json
        return ('{"servers":[' + ",".join([vj(c) for c in self._clients.values()]) + "]"
                + self._cap_json() + "}")

    @property
    def view_generation(self) -> int:
        """Changes when every view changes at once (a new default timeout)."""
        return self._view_generation

    def delta_json(self, since: int) -> str | None:
        """What changed after revision ``since``, as ``{"changed": [client view, ...],
        "removed": [clientId, ...]}`` JSON text (views from the cached fragments), or None
        when removals that old are no longer kept (send the full list instead). Removals up
        to ``since`` are forgotten: the one caller (the pusher) asks from its last answer on.
        A client removed and registered again since is in ``changed`` only."""
        if since < self._removals_kept_since:
            return None
        vj = self.view_json
        changed = [vj(c) for c in self._clients.values() if c.revision > since]
        removals = [(rev, cid) for rev, cid in self._removals if rev > since]
        self._removals = removals
        self._removals_kept_since = max(self._removals_kept_since, since)
        removed = [cid for _, cid in removals if cid not in self._clients]
        return ('{"changed":[' + ",".join(changed) + '],"removed":'
                + dumps(sorted(set(removed))) + self._cap_json() + "}")

    def next_deadline(self) -> float | None:
        """The wall-clock time at which the next online client times out (its last heartbeat
        plus its effective timeout: it is marked offline by a sweep at any moment after
        that), not before the start-up grace ends; None when nobody is online. Exact, and
        O(number of distinct timeout rules): the earliest front of the lanes."""
        deadline = math.inf
        default = self._default_timeout_seconds
        for lane in self._lanes.values():
            for client in lane.values():
                last = client.last_heartbeat_at
                if last is None:
                    return self.grace_until
                deadline = min(deadline, last + client.effective_timeout(default))
                break
        if deadline == math.inf:
            return None
        return max(deadline, self.grace_until)

    def timeout_of(self, client: Client) -> float:
        return client.effective_timeout(self.default_timeout_seconds)

    # -- loading -------------------------------------------------------------------------------

    def load(self, clients: Iterable[Client]) -> None:
        """Install clients read from storage (at start). Their status is kept as stored."""
        for c in clients:
            old = self._clients.get(c.client_id)
            if old is not None:
                c._order = old._order
                self._clients[c.client_id] = c
            else:
                self._insert(c)
        self._online = sum(1 for c in self._clients.values() if c.status == ONLINE)
        self._rebuild_index()

    def _insert(self, client: Client) -> None:
        client._order = self._next_order
        self._next_order += 1
        self._clients[client.client_id] = client

    def _rebuild_index(self) -> None:
        online = [c for c in self._clients.values() if c.status == ONLINE]
        online.sort(key=lambda c: -math.inf if c.last_heartbeat_at is None else c.last_heartbeat_at)
        self._lanes = {}
        self._lane_of = {}
        for c in online:
            self._index_put(c)
        self._latest_beat = max((c.last_heartbeat_at for c in online
                                 if c.last_heartbeat_at is not None), default=-math.inf)
        self._index_valid = True

    def _index_put(self, client: Client) -> None:
        """Put an online client at the end of its lane (moving it between lanes if its timeout
        rule changed)."""
        cid = client.client_id
        key = (client.timeout_seconds, client.interval_seconds)
        old = self._lane_of.get(cid)
        if old is not None and old != key:
            self._index_drop(cid)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = OrderedDict()
        lane[cid] = client
        lane.move_to_end(cid)
        self._lane_of[cid] = key

    def _index_insert_sorted(self, client: Client) -> None:
        """Put an online client into its lane at its place in last-heartbeat order (rare: a
        registration that changes an online client's timeout)."""
        key = (client.timeout_seconds, client.interval_seconds)
        lane = self._lanes.get(key, OrderedDict())
        last = client.last_heartbeat_at if client.last_heartbeat_at is not None else -math.inf
        items = list(lane.items())
        at = len(items)
        while at and (items[at - 1][1].last_heartbeat_at or -math.inf) > last:
            at -= 1
        items.insert(at, (client.client_id, client))
        self._lanes[key] = OrderedDict(items)
        self._lane_of[client.client_id] = key

    def _index_drop(self, client_id: str) -> None:
        key = self._lane_of.pop(client_id, None)
        if key is None:
            return
        lane = self._lanes[key]
        del lane[client_id]
        if not lane:
            del self._lanes[key]

    # -- installing states decided elsewhere (a shared backend) --------------------------------

    def put(self, client: Client) -> None:
        """Install a client's state as a shared backend decided it (a node's view of a change
        made by any node). Replaces the client's object; keeps its place in the order."""
        old = self._clients.get(client.client_id)
        if old is not None:
            client._order = old._order
            if old.status == ONLINE:
                self._online -= 1
            self._clients[client.client_id] = client
        else:
            self._insert(client)
        if client.status == ONLINE:
            self._online += 1
        self._bump(client)
        if client.status == ONLINE:
            last = client.last_heartbeat_at
            if last is not None and last >= self._latest_beat:
                self._latest_beat = last
            # States from several nodes arrive a little out of order: the end of its lane is
            # within milliseconds of its place, which only moves next_deadline() as much.
            self._index_put(client)
        else:
            self._index_drop(client.client_id)

    def drop(self, client_id: str) -> Client | None:
        """Forget a client removed elsewhere (no event: the node that removed it announced
        it). Returns it, or None if this view did not have it."""
        client = self._clients.get(client_id)
        if client is not None:
            self.remove(client_id, 0.0)
        return client

    def event(self, type_: str, client: Client, now: float, reason: str | None,
              previous_status: str | None = None) -> Event:
        """The event of a transition of ``client`` (its data: the client view)."""
        return self._event(type_, client, now, reason, previous_status)

    # -- transitions ---------------------------------------------------------------------------

    def _bump(self, client: Client) -> None:
        self._revision += 1
        client.revision = self._revision
        for journal in self._journals:
            journal.changed[client.client_id] = None

    def watch_changes(self) -> ChangeJournal:
        """A journal of the ids of clients changed (and removed) from now on, which its one
        reader empties with :meth:`ChangeJournal.take` (memory: at most one entry per client).
        """
        journal = ChangeJournal()
        self._journals.append(journal)
        return journal

    def _set_status(self, client: Client, status: str) -> None:
        if client.status == ONLINE and status != ONLINE:
            self._online -= 1
        elif client.status != ONLINE and status == ONLINE:
            self._online += 1
        client.status = status

    def check_rate(self, client_id: str, reported_status: str, now: float) -> None:
        """Raise RateLimited if this heartbeat comes too soon after the previous one.

        A clean shutdown (``status: "offline"``) is never rate limited, and neither is the
        first heartbeat after the wall clock was stepped back past the previous one (the agent
        would otherwise be refused until the clock caught up again, for hours or days).
        """
        client = self._clients.get(client_id)
        if client is None or client.last_heartbeat_at is None or reported_status == OFFLINE:
            return
        last = client.last_heartbeat_at
        wait = last + self.min_interval_seconds - now
        if wait > 0 and now >= last:
            raise RateLimited(wait)

    def heartbeat(self, hb: Heartbeat, now: float, *, peer_address: str | None = None) -> HeartbeatOutcome:
        """Record a heartbeat received at ``now`` (the server's clock, never the agent's)."""
        self.check_rate(hb.client_id, hb.status, now)
        client = self._clients.get(hb.client_id)
        created = False
        if client is None:
            if not self.auto_register:
                raise UnknownClient(hb.client_id)
            self._check_room()
            client = Client(client_id=hb.client_id, registered_at=now)
            self._insert(client)
            created = True
        events: list[Event] = []
        was_status = client.status
        old_reported, old_version = client.reported_status, client.version

        client.last_heartbeat_at = now
        client.reported_status = hb.status
        if hb.version is not None:
            client.version = hb.version
        client.ip_address = hb.ip_address if hb.ip_address is not None else (peer_address or client.ip_address)
        if hb.os_type is not None:
            client.os_type = hb.os_type
        if hb.name is not None and not client.registered or hb.name is not None and client.name is None:
            client.name = hb.name
        if hb.interval_seconds is not None:
            client.interval_seconds = hb.interval_seconds
        if hb.metrics is not None:
            client.latest_metrics = hb.metrics
        if hb.metadata is not None:
            client.metadata = hb.metadata
        client.clock_skew_seconds = (
            round(hb.timestamp - now, 3) if hb.timestamp is not None else None
        )
        self._bump(client)

        if hb.status == OFFLINE:
            if was_status != OFFLINE:
                self._set_status(client, OFFLINE)
                client.offline_since = now
                events.append(self._event(CLIENT_DISCONNECTED, client, now, REASON_SHUTDOWN,
                                          was_status))
        elif was_status != ONLINE:
            self._set_status(client, ONLINE)
            client.online_since = now
            client.offline_since = None
            events.append(self._event(CLIENT_CONNECTED, client, now, REASON_HEARTBEAT, was_status))
        elif hb.status != old_reported or client.version != old_version:
            events.append(self._event(CLIENT_STATUS_UPDATE, client, now, None))
        if client.status == ONLINE:
            if now >= self._latest_beat:
                self._latest_beat = now
            else:  # the wall clock was stepped back: the index is out of order
                self._index_valid = False
            self._index_put(client)
        else:
            self._index_drop(client.client_id)
        events.append(
            Event(
                HEARTBEAT_RECEIVED,
                client.client_id,
                now,
                {
                    "clientId": client.client_id,
                    "receivedAt": iso(now),
                    "reportedStatus": client.reported_status,
                    "latestMetrics": client.latest_metrics,
                },
            )
        )
        return HeartbeatOutcome(client, events, self.timeout_of(client), created)

    def register(self, reg: Registration, now: float) -> tuple[Client, list[Event], bool]:
        """Register (or update the registration of) a client. Returns (client, events, created)."""
        client = self._clients.get(reg.client_id)
        created = client is None
        if client is None:
            self._check_room()
            client = Client(client_id=reg.client_id, registered_at=now)
            self._insert(client)
        client.registered = True
        if reg.name is not None:
            client.name = reg.name
        if reg.tags is not None:
            client.tags = list(reg.tags)
        if reg.heartbeat_timeout_seconds is not None:
            client.timeout_seconds = reg.heartbeat_timeout_seconds
            if client.client_id in self._lane_of:
                # A new timeout rule: to the lane of its rule, where its last heartbeat may
                # not be the latest, so insert it in order.
                self._index_drop(client.client_id)
                self._index_insert_sorted(client)
        if reg.metadata is not None:
            client.metadata = reg.metadata
        self._bump(client)
        event = self._event(CLIENT_STATUS_UPDATE, client, now, REASON_REGISTERED if created else None)
        return client, [event], created

    def set_capabilities(self, client_id: str, capabilities: dict[str, Any] | None) -> bool:
        """What the client's agent advertises on its control channel (None: no channel);
        False if there is no such client."""
        client = self._clients.get(client_id)
        if client is None:
            return False
        if client.capabilities != capabilities:
            client.capabilities = capabilities
            self._bump(client)
        return True

    def remove(self, client_id: str, now: float) -> list[Event]:
        client = self._clients.pop(client_id, None)
        if client is None:
            raise UnknownClient(client_id)
        self._index_drop(client_id)
        self._set_status(client, OFFLINE)
        self._revision += 1
        for journal in self._journals:
            journal.changed.pop(client_id, None)
            journal.removed.add(client_id)
        self._removals.append((self._revision, client_id))
        if len(self._removals) > MAX_REMOVALS_KEPT:
            drop = len(self._removals) - MAX_REMOVALS_KEPT // 2
            self._removals_kept_since = self._removals[drop - 1][0]
            del self._removals[:drop]
        return [self._event(CLIENT_REMOVED, client, now, REASON_REMOVED)]

    def sweep(self, now: float) -> list[Event]:
        """Mark offline every online client whose last heartbeat is older than its timeout.

        Nobody is marked offline before ``grace_until``. Reads only the front of each lane of
        the index (the clients past their deadline, and one more per lane), so a sweep of a
        large fleet in which nobody has timed out costs next to nothing; the result is exactly that of
        :meth:`sweep_all`, which it falls back to when the wall clock was stepped back.
        """
        if now < self.grace_until:
            return []
        if not self._index_valid or now < self._latest_beat:
            return self.sweep_all(now)
        default = self._default_timeout_seconds
        expired: list[Client] = []
        for lane in self._lanes.values():
            for client in lane.values():
                last = client.last_heartbeat_at
                if last is not None and now - last <= client.effective_timeout(default):
                    break  # the lane is in deadline order: everyone after is younger
                expired.append(client)
        if len(expired) > 1:
            expired.sort(key=lambda c: c._order)  # the order of the registry, as sweep_all
        events: list[Event] = []
        for client in expired:
            self._index_drop(client.client_id)
            self._set_status(client, OFFLINE)
            client.offline_since = now
            self._bump(client)
            events.append(self._event(CLIENT_DISCONNECTED, client, now, REASON_TIMEOUT, ONLINE))
        return events

    def sweep_all(self, now: float) -> list[Event]:
        """The plain sweep: every client looked at, in the registry's order. (``sweep`` gives
        the same result from its index; this is its reference, and its fallback.)"""
        if now < self.grace_until:
            return []
        events: list[Event] = []
        default = self.default_timeout_seconds
        for client in self._clients.values():
            if client.status != ONLINE:
                continue
            last = client.last_heartbeat_at
            if last is not None and last > now:
                # The wall clock was stepped back: a heartbeat "from the future" counts as
                # having arrived now, so a silent client still goes offline one timeout later
                # instead of when the clock catches up.
                client.last_heartbeat_at = last = now
                self._bump(client)
            if last is None or now - last > client.effective_timeout(default):
                self._set_status(client, OFFLINE)
                client.offline_since = now
                self._bump(client)
                events.append(self._event(CLIENT_DISCONNECTED, client, now, REASON_TIMEOUT, ONLINE))
        self._rebuild_index()
        return events

    def _event(self, type_: str, client: Client, now: float, reason: str | None,
               previous_status: str | None = None) -> Event:
        data = client.view(self.default_timeout_seconds)
        if reason is not None and type_ in (CLIENT_DISCONNECTED, CLIENT_REMOVED, CLIENT_CONNECTED):
            data["reason"] = reason
        if previous_status is not None:
            data["previousStatus"] = previous_status
        return Event(type_, client.client_id, now, data, reason, previous_status)
