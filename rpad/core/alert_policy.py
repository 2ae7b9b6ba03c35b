"""The alert policy: which presence transitions become alerts for people, and when.

Fed every client transition (:meth:`AlertPolicy.observe`: ``CLIENT_CONNECTED`` with its
``previousStatus``, ``CLIENT_DISCONNECTED`` with its reason, ``CLIENT_REMOVED``) and ticked
(:meth:`AlertPolicy.tick`), it decides which alerts to raise and when; :meth:`next_tick` says
when it next needs a tick, so the task that drives it sleeps until exactly then. Dashboards
see every transition at once on their own topics; this only governs alerts (webhooks, email,
Apprise, the ``notifications`` topic).

The rules, per client (:class:`Policy`, defaults in the config, overrides per tag and per
client):

- **offline** when a client has stayed offline ``alert_after_seconds`` (0: at once). A client
  back within that time raises nothing at all.
- **online** (a recovery) when a client for which an offline (or flapping) alert was raised
  has stayed online ``recover_after_seconds``. A new client coming online raises nothing.
- **reminder** every ``repeat_every_seconds`` (0: never) while it is still offline, at most
  ``max_reminders`` times per outage.
- **flapping** when it made ``flap_transitions`` transitions (0: never) within
  ``flap_window_seconds``: one alert, then nothing for that client until it has been stable
  (no transition) for ``flap_window_seconds``; then the state it settled in counts as
  usual — offline raises its alert (``alert_after_seconds`` after it went down), online
  raises a recovery.
- **silences**: an alert due while the client is silenced (:class:`~rpad.core.silences.SilenceBook`)
  waits for the end of the silence and is looked at again then: a client still down raises
  its alert when the silence ends; one that came back meanwhile raises nothing (or its
  recovery, if it had been alerted before the silence).

Across clients (:class:`Grouping`): at most ``group_threshold`` alert messages go out in any
``group_window_seconds``; past that, alerts are collected for one window and go out as one
alert per kind listing the clients, with counts — a partition of 300 clients gives a few
messages, not 300.

Pure: no trio, no I/O, the time passed in (wall-clock epoch seconds). Processing is in due
order and each alert carries its due time as ``at``, so tests get exact times however late a
tick comes.

Resource handling: per known client a small state (its pending alerts, its recent transitions
for flapping); a heap of due times with lazy deletion, compacted when it grows past
:data:`HEAP_COMPACT_FACTOR` times the pending alerts.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .alert_state import (
    POLICY_FIELDS,
    AlertItem,
    ClientState,
    Grouping,
    GroupState,
    Overrides,
    Policy,
    PolicyOverride,
    group_from_json,
    group_to_json,
    resolve,
    state_from_json,
    state_to_json,
)
from .model import CLIENT_CONNECTED, CLIENT_DISCONNECTED, CLIENT_REMOVED, OFFLINE, ONLINE, Event
from .silences import SilenceBook

# The policy's values live in alert_state (with its memory); they are named here too.
__all__ = ["KINDS", "LEVELS", "POLICY_FIELDS", "Alert", "AlertItem", "AlertPolicy", "Grouping",
           "Overrides", "Policy", "PolicyOverride", "level_rank", "resolve"]

LEVELS = ("info", "success", "warning", "error", "urgent")
KINDS = ("offline", "online", "reminder", "flapping")
# Alert kinds -> the event names targets filter on ("client.offline", ...); a grouped alert of
# a kind is "clients.<kind>" and passes the same filter.
EVENT_PREFIX = "client."
GROUP_EVENT_PREFIX = "clients."
HEAP_COMPACT_FACTOR = 4
HEAP_COMPACT_MIN = 1024

# Internal (not alerts): the end of a flapping spell.
_FLAP_END = "flap_end"
# What the policy keeps of a client's view (for the text of its alerts): not its metadata or
# metrics, so that a large fleet's policy state stays small. The sender adds the current full
# view to a single client's alert.
KEPT_FIELDS = ("clientId", "name", "status", "reason", "previousStatus", "tags", "ipAddress",
               "version", "osType", "lastHeartbeatAt", "onlineSince", "offlineSince")


def _kept(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in KEPT_FIELDS if k in data}


def level_rank(level: str) -> int:
    return LEVELS.index(level)


@attrs.frozen
class Alert:
    """What the policy raises: one client's alert, or a group of one kind."""

    kind: str
    level: str
    at: float
    items: tuple[AlertItem, ...]
    grouped: bool = False

    @property
    def event(self) -> str:
        return (GROUP_EVENT_PREFIX if self.grouped else EVENT_PREFIX) + self.kind

    @property
    def filter_event(self) -> str:
        """The event name a target's ``events`` filter is checked against."""
        return EVENT_PREFIX + self.kind


class AlertPolicy:
    def __init__(self, default: Policy, *, overrides: Overrides | None = None,
                 grouping: Grouping | None = None, silences: SilenceBook | None = None) -> None:
        self.default = default
        self.overrides = overrides or Overrides()
        self.grouping = grouping or Grouping()
        self.silences = silences or SilenceBook()
        self._silence_version = self.silences.version
        self._clients: dict[str, ClientState] = {}
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()
        self._pending_count = 0
        # Grouping: when recent messages went out; the open group (flush time, items by kind).
        self._g = GroupState()
        # Changes since take_changes() (client ids; whether the group changed), when tracked.
        self._changed: set[str] | None = None
        self._group_changed = False
        # Counters: alerts raised by kind, messages (a group is one), deferrals by silences.
        self.raised: dict[str, int] = {}
        self.messages = 0
        self.deferred = 0

    # -- configuration -------------------------------------------------------------------------

    def policy_for(self, client_id: str, tags: Iterable[str]) -> Policy:
        return resolve(self.default, self.overrides, client_id, tags)

    def reconfigure(self, default: Policy, overrides: Overrides, grouping: Grouping,
                    now: float) -> None:
        """New policies: every known client's policy is resolved again and its pending alerts
        rescheduled by the new rules."""
        self.default, self.overrides, self.grouping = default, overrides, grouping
        for c in self._clients.values():
            c.policy = self.policy_for(c.client_id, c.tags)
            self._reschedule(c, now)

    def _reschedule(self, c: ClientState, now: float) -> None:
        p = c.policy
        for kind in list(c.pending):
            if kind == "offline":
                self._schedule(c, kind, c.since + p.alert_after_seconds, now)
            elif kind == "online":
                self._schedule(c, kind, c.since + p.recover_after_seconds, now)
            elif kind == "reminder":
                if p.repeat_every_seconds > 0 and c.reminders < p.max_reminders:
                    self._schedule(c, kind, c.last_alert_at + p.repeat_every_seconds, now)
                else:
                    self._cancel(c, kind)
            elif kind == _FLAP_END and c.transitions:
                self._schedule(c, kind, c.transitions[-1] + p.flap_window_seconds, now)

    # -- reading -------------------------------------------------------------------------------

    def silenced_until(self, client_id: str, tags: Iterable[str], now: float) -> float | None:
        return self.silences.silenced_until(client_id, tags, now)

    def pending(self, client_id: str) -> dict[str, float]:
        """The client's pending alerts: kind -> when it will be looked at (for tests and the
        API)."""
        c = self._clients.get(client_id)
        return {k: v[1] for k, v in c.pending.items()} if c is not None else {}

    def is_flapping(self, client_id: str) -> bool:
        c = self._clients.get(client_id)
        return c is not None and c.flapping

    def next_tick(self) -> float | None:
        """When :meth:`tick` must next be called (None: nothing pending)."""
        self._check_silences()
        heap = self._heap
        while heap:
            due, _, cid, kind = heap[0]
            c = self._clients.get(cid)
            if c is not None and c.pending.get(kind, (0.0, None))[1] == due:
                break
            heapq.heappop(heap)
        t = heap[0][0] if heap else None
        flush = self._g.flush_at
        if flush is not None:
            t = flush if t is None else min(t, flush)
        return t

    def known_status(self, client_id: str) -> str | None:
        """The client's status as the policy knows it (None: it keeps no state for it)."""
        c = self._clients.get(client_id)
        return c.status if c is not None else None

    # -- memory (cluster mode: saved by the alerting node, restored by the next) ------------

    def track_changes(self) -> None:
        """From now on, remember which clients' states (and whether the grouping) changed,
        for :meth:`take_changes`."""
        self._changed = set()
        self._group_changed = False

    def _touch(self, client_id: str) -> None:
        if self._changed is not None:
            self._changed.add(client_id)

    def take_changes(self) -> tuple[dict[str, dict[str, Any] | None], dict[str, Any] | None]:
        """The states changed since the last call, as JSON (None: the policy forgot the
        client), and the grouping's if it changed (else None)."""
        changed, self._changed = self._changed or set(), set()
        states: dict[str, dict[str, Any] | None] = {}
        for cid in changed:
            c = self._clients.get(cid)
            states[cid] = state_to_json(c) if c is not None else None
        group = group_to_json(self._g) if self._group_changed else None
        self._group_changed = False
        return states, group

    def restore(self, states: Mapping[str, Mapping[str, Any]],
                group: Mapping[str, Any] | None) -> list[str]:
        """Take up the memory another node saved (:meth:`take_changes`); each client's policy
        is resolved again from the ones in force. Deferred alerts are looked at again from
        their due times (silences may have changed meanwhile). Returns the ids of states that
        could not be read (they are started afresh)."""
        bad = []
        for cid, d in states.items():
            try:
                c = state_from_json(cid, d, self.default)
            except (KeyError, TypeError, ValueError):
                bad.append(cid)
                continue
            c.policy = self.policy_for(cid, c.tags)
            old = self._clients.pop(cid, None)
            if old is not None:
                self._pending_count -= len(old.pending)
            self._clients[cid] = c
            self._pending_count += len(c.pending)
            for kind, (_, look) in c.pending.items():
                heapq.heappush(self._heap, (look, next(self._seq), cid, kind))
        if group is not None:
            try:
                self._g = group_from_json(group)
            except (KeyError, TypeError, ValueError):
                bad.append("(grouping)")
        self._silence_version = -1  # look at deferred alerts again
        return bad

    # -- transitions ---------------------------------------------------------------------------

    def load(self, client_id: str, data: Mapping[str, Any], status: str, since: float,
             reason: str | None, now: float) -> None:
        """A client as rpad found it at start (its policy state is not stored): one offline
        for longer than its ``alert_after_seconds`` is taken as already alerted (its
        recovery will be announced), one offline for less gets its alert when that time is
        up, as if rpad had not restarted. Online ones need no state until they transition."""
        if status != OFFLINE:
            return  # an online client needs no state until it transitions
        tags = tuple(data.get("tags") or ())
        c = ClientState(client_id, self.policy_for(client_id, tags), _kept(data), tags, status,
                    since, reason)
        self._clients[client_id] = c
        self._touch(client_id)
        if status == OFFLINE:
            due = since + c.policy.alert_after_seconds
            if due <= now:
                c.owed_recovery, c.last_alert_at = True, now
            else:
                self._schedule(c, "offline", due, now)

    def observe(self, ev: Event, now: float | None = None) -> None:
        """Record a transition (other events are ignored). ``now`` defaults to the event's
        time."""
        t = ev.at if now is None else now
        if ev.type == CLIENT_REMOVED:
            c = self._clients.pop(ev.client_id, None)
            if c is not None:
                self._pending_count -= len(c.pending)
                self._touch(ev.client_id)
            return
        if ev.type not in (CLIENT_CONNECTED, CLIENT_DISCONNECTED):
            return
        tags = tuple(ev.data.get("tags") or ())
        c = self._clients.get(ev.client_id)
        if c is None:
            c = ClientState(ev.client_id, self.policy_for(ev.client_id, tags), {}, tags,
                        ev.previous_status or "unknown", t)
            self._clients[ev.client_id] = c
        elif tags != c.tags:
            c.tags = tags
            c.policy = self.policy_for(ev.client_id, tags)
        first = c.status == "unknown" and ev.type == CLIENT_CONNECTED
        self._touch(ev.client_id)
        c.data = _kept(ev.data)
        c.since = t
        p = c.policy
        if ev.type == CLIENT_DISCONNECTED:
            c.status, c.reason = OFFLINE, ev.reason
        else:
            c.status, c.reason = ONLINE, None
        if first:
            return  # heard from for the first time: nothing to say
        # Flapping: count this transition.
        if p.flap_transitions > 0:
            c.transitions.append(t)
            while c.transitions and c.transitions[0] <= t - p.flap_window_seconds:
                c.transitions.popleft()
            if not c.flapping and len(c.transitions) >= p.flap_transitions:
                c.flapping = True
                for kind in ("offline", "online", "reminder"):
                    self._cancel(c, kind)
                self._schedule(c, "flapping", t, t)
            if c.flapping:
                self._schedule(c, _FLAP_END, t + p.flap_window_seconds, t)
                return
        self._settle(c, t)

    def _settle(self, c: ClientState, t: float) -> None:
        """What the client's current state calls for (not flapping)."""
        p = c.policy
        if c.status == OFFLINE:
            self._cancel(c, "online")
            if c.owed_recovery:
                # Down again before its recovery was announced: the same outage goes on;
                # reminders carry on from the last alert.
                if (p.repeat_every_seconds > 0 and c.reminders < p.max_reminders
                        and "reminder" not in c.pending):
                    self._schedule(c, "reminder", c.last_alert_at + p.repeat_every_seconds, t)
            else:
                self._schedule(c, "offline", max(t, c.since + p.alert_after_seconds), t)
        else:
            self._cancel(c, "offline")
            self._cancel(c, "reminder")
            if c.owed_recovery:
                self._schedule(c, "online", max(t, c.since + p.recover_after_seconds), t)

    # -- scheduling ----------------------------------------------------------------------------

    def _schedule(self, c: ClientState, kind: str, due: float, now: float) -> None:
        self._touch(c.client_id)
        if kind not in c.pending:
            self._pending_count += 1
        c.pending[kind] = (due, due)
        heapq.heappush(self._heap, (due, next(self._seq), c.client_id, kind))
        self._maybe_compact()

    def _defer(self, c: ClientState, kind: str, until: float) -> None:
        due = c.pending[kind][0]
        self._touch(c.client_id)
        c.pending[kind] = (due, until)
        heapq.heappush(self._heap, (until, next(self._seq), c.client_id, kind))
        self.deferred += 1

    def _cancel(self, c: ClientState, kind: str) -> None:
        if c.pending.pop(kind, None) is not None:
            self._pending_count -= 1
            self._touch(c.client_id)

    def _maybe_compact(self) -> None:
        if len(self._heap) > max(HEAP_COMPACT_MIN, HEAP_COMPACT_FACTOR * self._pending_count):
            self._heap = [(look, next(self._seq), c.client_id, kind)
                          for c in self._clients.values()
                          for kind, (_, look) in c.pending.items()]
            heapq.heapify(self._heap)

    def _check_silences(self) -> None:
        """After silences changed, deferred alerts are looked at again from their own due
        time (a deleted silence no longer holds them back)."""
        if self.silences.version == self._silence_version:
            return
        self._silence_version = self.silences.version
        for c in self._clients.values():
            for kind, (due, look) in list(c.pending.items()):
                if look != due:
                    c.pending[kind] = (due, due)
                    self._touch(c.client_id)
                    heapq.heappush(self._heap, (due, next(self._seq), c.client_id, kind))

    # -- ticking -------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Alert]:
        """Every alert due at or before ``now``, in order of their due times."""
        self._check_silences()
        out: list[Alert] = []
        heap = self._heap
        while True:
            flush = self._g.flush_at
            head = heap[0][0] if heap else None
            if flush is not None and flush <= now and (head is None or flush <= head):
                self._flush_group(flush, out)
                continue
            if head is None or head > now:
                break
            look, _, cid, kind = heapq.heappop(heap)
            c = self._clients.get(cid)
            if c is None or c.pending.get(kind, (0.0, None))[1] != look:
                continue  # cancelled or rescheduled since
            self._due(c, kind, look, out)
        return out

    def _due(self, c: ClientState, kind: str, t: float, out: list[Alert]) -> None:
        p = c.policy
        self._touch(c.client_id)
        if kind == _FLAP_END:
            self._cancel(c, kind)
            c.flapping = False
            c.transitions.clear()
            if c.status == OFFLINE:
                # Settled down: an outage like any other, from when it went down.
                c.owed_recovery = False
                self._cancel(c, "online")
                self._schedule(c, "offline", max(t, c.since + p.alert_after_seconds), t)
            else:
                self._settle(c, t)
            return
        valid = {
            "offline": c.status == OFFLINE and not c.flapping,
            "reminder": c.status == OFFLINE and c.owed_recovery and not c.flapping,
            "online": c.status == ONLINE and c.owed_recovery and not c.flapping,
            "flapping": c.flapping,
        }[kind]
        if not valid:
            self._cancel(c, kind)
            return
        until = self.silences.silenced_until(c.client_id, c.tags, t)
        if until is not None:
            self._defer(c, kind, until)
            return
        self._cancel(c, kind)
        item = AlertItem(c.client_id, c.data, c.since, c.reason)
        level = p.offline_level
        if kind == "offline":
            c.owed_recovery, c.reminders, c.last_alert_at = True, 0, t
            if p.repeat_every_seconds > 0 and p.max_reminders > 0:
                self._schedule(c, "reminder", t + p.repeat_every_seconds, t)
        elif kind == "reminder":
            c.reminders += 1
            c.last_alert_at = t
            item = attrs.evolve(item, reminder=c.reminders, max_reminders=p.max_reminders)
            if c.reminders < p.max_reminders:
                self._schedule(c, "reminder", t + p.repeat_every_seconds, t)
        elif kind == "online":
            c.owed_recovery, c.reminders = False, 0
            level = "success"
        else:  # flapping
            c.owed_recovery = True
            c.last_alert_at = t
            level = "warning" if level_rank(p.offline_level) < level_rank("warning") else p.offline_level
            item = attrs.evolve(item, transitions=len(c.transitions))
        self._raise(kind, level, t, item, out)

    # -- grouping ------------------------------------------------------------------------------

    def _raise(self, kind: str, level: str, t: float, item: AlertItem, out: list[Alert]) -> None:
        self.raised[kind] = self.raised.get(kind, 0) + 1
        g, mem = self.grouping, self._g
        self._group_changed = True
        if mem.flush_at is not None:
            mem.members.setdefault(kind, []).append((item, level))
            return
        recent = mem.recent
        while recent and recent[0] <= t - g.group_window_seconds:
            recent.popleft()
        if g.group_threshold <= 0 or len(recent) < g.group_threshold:
            recent.append(t)
            self.messages += 1
            out.append(Alert(kind, level, t, (item,)))
            return
        mem.flush_at = t + g.group_window_seconds
        mem.members = {kind: [(item, level)]}

    def _flush_group(self, t: float, out: list[Alert]) -> None:
        mem = self._g
        self._group_changed = True
        for kind in KINDS:
            members = mem.members.get(kind)
            if not members:
                continue
            level = max((lv for _, lv in members), key=level_rank)
            items = tuple(sorted((i for i, _ in members), key=lambda i: i.client_id))
            out.append(Alert(kind, level, t, items, grouped=len(items) > 1))
            mem.recent.append(t)
            self.messages += 1
        mem.members = {}
        mem.flush_at = None
