"""The alert policy's values and memory, and the memory's JSON form.

:class:`Policy` (when one client's transitions become alerts), its overrides per tag and
client (:class:`PolicyOverride`, :class:`Overrides`, :func:`resolve`), :class:`Grouping` and
:class:`AlertItem` (one client's part in an alert) are the values
:mod:`rpad.core.alert_policy` works with (it names them too).
:class:`ClientState` is what :class:`~rpad.core.alert_policy.AlertPolicy` remembers of one
client: its state and since when, whether an alert is owed a recovery, reminders sent, its
recent transitions (flapping) and its pending alerts. :class:`GroupState` is the policy's
memory across clients: when recent alert messages went out, and the open group.

In cluster mode the alerting node saves these (as the JSON below) in the shared backend with
every step it takes, so that the node taking over after it carries on exactly where it
stopped: the same alerts at the same times, none twice, none forgotten. The policy that
applies (:class:`Policy`) is not saved: it is resolved again from the
configuration and overrides in force.

Pure: no I/O, no clock. Error handling: :func:`state_from_json` and
:func:`group_from_json` raise KeyError/TypeError/ValueError for JSON they did not write.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

# The JSON form's version: a node that finds another one starts that client afresh.
STATE_VERSION = 1


@attrs.frozen
class Policy:
    """When one client's transitions become alerts (see rpad.core.alert_policy's rules)."""

    alert_after_seconds: float = 0.0
    recover_after_seconds: float = 0.0
    flap_transitions: int = 6
    flap_window_seconds: float = 600.0
    repeat_every_seconds: float = 0.0
    max_reminders: int = 3
    # The level of offline alerts and reminders (a tag override can make some urgent).
    offline_level: str = "warning"


@attrs.frozen
class PolicyOverride:
    """Some fields of a :class:`Policy`, for a tag or a client; None: not overridden."""

    alert_after_seconds: float | None = None
    recover_after_seconds: float | None = None
    flap_transitions: int | None = None
    flap_window_seconds: float | None = None
    repeat_every_seconds: float | None = None
    max_reminders: int | None = None
    offline_level: str | None = None

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in attrs.asdict(self).items() if v is not None}


POLICY_FIELDS = tuple(a.name for a in attrs.fields(Policy))


@attrs.frozen
class Grouping:
    group_window_seconds: float = 60.0
    # 0: never group.
    group_threshold: int = 3


@attrs.frozen
class Overrides:
    """Overrides by tag and by client id (the config's and the admin API's, merged)."""

    tags: Mapping[str, PolicyOverride] = attrs.Factory(dict)
    clients: Mapping[str, PolicyOverride] = attrs.Factory(dict)


def resolve(default: Policy, overrides: Overrides, client_id: str,
            tags: Iterable[str]) -> Policy:
    """The client's policy: its own override, else the first of its tags (in the client's
    order) that sets the field, else the default."""
    fields: dict[str, Any] = {}
    for tag in reversed(list(tags)):
        o = overrides.tags.get(tag)
        if o is not None:
            fields.update(o.fields())
    o = overrides.clients.get(client_id)
    if o is not None:
        fields.update(o.fields())
    return attrs.evolve(default, **fields) if fields else default


@attrs.frozen
class AlertItem:
    """One client's part in an alert."""

    client_id: str
    # The client view when its last transition happened (name, tags, ip, version, ...).
    client: Mapping[str, Any]
    # Since when it is in its current state (offline since / online since).
    since: float
    reason: str | None = None
    # For reminders: which one (1, 2, ...) of how many.
    reminder: int = 0
    max_reminders: int = 0
    # For flapping: transitions within the window.
    transitions: int = 0


@attrs.define(eq=False)
class ClientState:
    """What the policy keeps of one client between its transitions."""

    client_id: str
    policy: Policy
    data: Mapping[str, Any]
    tags: tuple[str, ...]
    status: str
    since: float
    reason: str | None = None
    # An offline or flapping alert went out and no recovery since.
    owed_recovery: bool = False
    reminders: int = 0
    last_alert_at: float = 0.0
    flapping: bool = False
    transitions: deque[float] = attrs.Factory(deque)
    # kind -> (when it is due by the rules, when it will be looked at: later if deferred)
    pending: dict[str, tuple[float, float]] = attrs.Factory(dict)


def state_to_json(c: ClientState) -> dict[str, Any]:
    return {"v": STATE_VERSION, "data": dict(c.data), "tags": list(c.tags), "status": c.status,
            "since": c.since, "reason": c.reason, "owed": c.owed_recovery,
            "reminders": c.reminders, "lastAlertAt": c.last_alert_at, "flapping": c.flapping,
            "transitions": list(c.transitions),
            "pending": {k: [due, look] for k, (due, look) in c.pending.items()}}


def state_from_json(client_id: str, d: Mapping[str, Any], policy: Policy) -> ClientState:
    if d.get("v") != STATE_VERSION:
        raise ValueError(f"alert state version {d.get('v')!r}, not {STATE_VERSION}")
    return ClientState(
        client_id, policy, dict(d["data"]), tuple(str(t) for t in d["tags"]), str(d["status"]),
        float(d["since"]), d["reason"], bool(d["owed"]), int(d["reminders"]),
        float(d["lastAlertAt"]), bool(d["flapping"]),
        deque(float(t) for t in d["transitions"]),
        {str(k): (float(v[0]), float(v[1])) for k, v in d["pending"].items()})


@attrs.define
class GroupState:
    """The policy's memory across clients: when recent alert messages went out, and the group
    being collected (when it is sent; its members by kind, with their levels)."""

    recent: deque[float] = attrs.Factory(deque)
    flush_at: float | None = None
    members: dict[str, list[tuple[AlertItem, str]]] = attrs.Factory(dict)


def _item_to_json(i: AlertItem) -> dict[str, Any]:
    return {"clientId": i.client_id, "client": dict(i.client), "since": i.since,
            "reason": i.reason, "reminder": i.reminder, "maxReminders": i.max_reminders,
            "transitions": i.transitions}


def _item_from_json(d: Mapping[str, Any]) -> AlertItem:
    return AlertItem(str(d["clientId"]), dict(d["client"]), float(d["since"]), d["reason"],
                     int(d["reminder"]), int(d["maxReminders"]), int(d["transitions"]))


def group_to_json(g: GroupState) -> dict[str, Any]:
    return {"v": STATE_VERSION, "recent": list(g.recent), "flushAt": g.flush_at,
            "members": {kind: [[_item_to_json(i), level] for i, level in items]
                        for kind, items in g.members.items()}}


def group_from_json(d: Mapping[str, Any]) -> GroupState:
    if d.get("v") != STATE_VERSION:
        raise ValueError(f"alert group state version {d.get('v')!r}, not {STATE_VERSION}")
    flush = d["flushAt"]
    return GroupState(deque(float(t) for t in d["recent"]),
                      float(flush) if flush is not None else None,
                      {str(kind): [(_item_from_json(i), str(level)) for i, level in items]
                       for kind, items in d["members"].items()})
