"""What an alert says: its JSON payload (the webhook body, and what the outbox stores), and the
title and body people read (email, Apprise, the ``notifications`` topic), from templates.

Templates are :class:`string.Template` texts (``$name``, ``${clientId}``): they can only
substitute the fields below, never reach into objects (``str.format`` would allow
``{client.__class__}``). Unknown fields are refused when the config is loaded
(:func:`template_problems`); an empty template means the default, which is good without
editing.

Fields: ``event`` (client.offline, clients.offline, ...), ``kind`` (offline, online,
reminder, flapping, test), ``level``, ``at`` (ISO time of the alert), ``clientId``, ``name``
(the client's name, else its id), ``reason``, ``why`` (the reason in words), ``since`` (ISO
time it went offline or came back), ``duration`` (how long it has been so, in words),
``ipAddress``, ``version``, ``tags``, ``lastHeartbeat``, ``count`` (clients in the alert),
``clients`` (their names, the first 20), ``reminder``, ``maxReminders``, ``transitions``,
``deliveryId``.

Pure: no I/O.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

import attrs

from .alert_policy import Alert, AlertItem
from .model import REASON_SHUTDOWN, REASON_TIMEOUT
from .times import iso

FIELDS = ("event", "kind", "level", "at", "clientId", "name", "reason", "why", "since",
          "duration", "ipAddress", "version", "tags", "lastHeartbeat", "count", "clients",
          "reminder", "maxReminders", "transitions", "deliveryId")
# A grouped alert names at most this many clients in its text (the payload lists them all).
MAX_NAMED_CLIENTS = 20

_WHY = {REASON_TIMEOUT: "no heartbeat within its timeout", REASON_SHUTDOWN: "its agent shut down"}

TITLES = {
    "offline": "$name is offline",
    "online": "$name is back online",
    "reminder": "$name is still offline (reminder $reminder of $maxReminders)",
    "flapping": "$name is flapping",
    "test": "rpad: test alert",
}
GROUP_TITLES = {
    "offline": "$count clients are offline",
    "online": "$count clients are back online",
    "reminder": "$count clients are still offline",
    "flapping": "$count clients are flapping",
}
BODIES = {
    "offline": "$name ($clientId) went offline at $since: $why.\n"
               "Last heartbeat: $lastHeartbeat. Address: $ipAddress. Version: $version.",
    "online": "$name ($clientId) is back online since $since (it had been offline).",
    "reminder": "$name ($clientId) has been offline for $duration, since $since ($why).",
    "flapping": "$name ($clientId) went online and offline $transitions times in a short "
                "while. No more alerts for it until it is stable; it is $reason now.",
    "test": "This is a test alert from rpad ($deliveryId). If you can read it, this target "
            "works.",
}
GROUP_BODIES = {
    "offline": "$count clients went offline: $clients.",
    "online": "$count clients are back online: $clients.",
    "reminder": "$count clients are still offline: $clients.",
    "flapping": "$count clients are flapping: $clients.",
}


def template_problems(text: str) -> list[str]:
    """Why a template cannot be used (unknown fields, a stray ``$``); [] when it can."""
    if not text:
        return []
    t = string.Template(text)
    if not t.is_valid():
        return ["a stray $ (write $$ for a dollar sign)"]
    unknown = sorted(set(t.get_identifiers()) - set(FIELDS))
    return [f"unknown field ${u} (fields: {', '.join(FIELDS)})" for u in unknown]


def _duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} days {s % 86400 // 3600} h"


def _item_json(i: AlertItem) -> dict[str, Any]:
    c = i.client
    return {"clientId": i.client_id, "name": c.get("name"), "reason": i.reason,
            "since": iso(i.since), "tags": c.get("tags") or [], "ipAddress": c.get("ipAddress"),
            "version": c.get("version")}


def payload(alert: Alert, alert_id: str, delivery_id: str) -> dict[str, Any]:
    """The alert's JSON: the webhook body, and what the outbox keeps."""
    body: dict[str, Any] = {"event": alert.event, "kind": alert.kind, "level": alert.level,
                            "at": iso(alert.at), "alertId": alert_id, "deliveryId": delivery_id}
    if alert.grouped:
        body["count"] = len(alert.items)
        body["clients"] = [_item_json(i) for i in alert.items]
        return body
    i = alert.items[0]
    body.update({"clientId": i.client_id, "reason": i.reason, "since": iso(i.since),
                 "client": dict(i.client)})
    if alert.kind == "reminder":
        body.update({"reminder": i.reminder, "maxReminders": i.max_reminders})
    if alert.kind == "flapping":
        body["transitions"] = i.transitions
    return body


def test_payload(at: float, alert_id: str, delivery_id: str, target: str) -> dict[str, Any]:
    return {"event": "test", "kind": "test", "level": "info", "at": iso(at), "alertId": alert_id,
            "deliveryId": delivery_id, "target": target}


def fields(p: Mapping[str, Any]) -> dict[str, str]:
    """The template fields of a payload (missing values as "-")."""
    kind = str(p.get("kind", ""))
    out = {k: "-" for k in FIELDS}
    out.update({"event": str(p.get("event", "")), "kind": kind, "level": str(p.get("level", "")),
                "at": str(p.get("at") or "-"), "deliveryId": str(p.get("deliveryId", ""))})
    clients = p.get("clients")
    if clients is not None:
        names = [str(c.get("name") or c.get("clientId")) for c in clients]
        shown = ", ".join(names[:MAX_NAMED_CLIENTS])
        if len(names) > MAX_NAMED_CLIENTS:
            shown += f" and {len(names) - MAX_NAMED_CLIENTS} more"
        out.update({"count": str(len(names)), "clients": shown})
        return out
    c = p.get("client") or {}
    cid = str(p.get("clientId") or "")
    reason = p.get("reason")
    name = str(c.get("name") or cid or "-")
    out.update({"clientId": cid or "-", "name": name, "count": "1", "clients": name,
                "reason": str(reason or ("offline" if kind == "flapping" else "-")),
                "why": _WHY.get(str(reason), str(reason or "-")),
                "since": str(p.get("since") or "-"),
                "ipAddress": str(c.get("ipAddress") or "-"),
                "version": str(c.get("version") or "-"),
                "tags": ", ".join(c.get("tags") or []) or "-",
                "lastHeartbeat": str(c.get("lastHeartbeatAt") or "never"),
                "reminder": str(p.get("reminder", "-")),
                "maxReminders": str(p.get("maxReminders", "-")),
                "transitions": str(p.get("transitions", "-"))})
    if kind == "flapping":
        out["reason"] = str(c.get("status") or "-")
    return out


def with_duration(f: dict[str, str], since: float | None, now: float) -> dict[str, str]:
    if since is not None:
        f = {**f, "duration": _duration(now - since)}
    return f


def render(p: Mapping[str, Any], title_template: str = "", body_template: str = "",
           *, now: float | None = None, since: float | None = None) -> tuple[str, str]:
    """(title, body) of a payload, from the given templates or the defaults."""
    kind = str(p.get("kind", ""))
    grouped = "clients" in p
    f = fields(p)
    if now is not None:
        f = with_duration(f, since, now)
    title = title_template or (GROUP_TITLES if grouped else TITLES).get(kind, "rpad: $event")
    body = body_template or (GROUP_BODIES if grouped else BODIES).get(kind, "$event")
    return (string.Template(title).safe_substitute(f),
            string.Template(body).safe_substitute(f))


@attrs.frozen
class Notice:
    """A ``NOTIFICATION`` for the dashboards (see :func:`notice_for`)."""

    title: str
    message: str
    level: str
    auto_close: bool
    extra: dict[str, Any]


_NOTICE_TITLES = {"offline": "Client offline", "online": "Client online",
                  "reminder": "Client still offline", "flapping": "Client flapping"}


def notice_for(alert: Alert, *, now: float) -> Notice:
    """The dashboards' notification of an alert: problems stay until dismissed, recoveries
    close by themselves."""
    p = payload(alert, "", "")
    title, message = render(p, now=now, since=alert.items[0].since)
    if not alert.grouped:
        i = alert.items[0]
        name = i.client.get("name") or i.client_id
        if alert.kind == "offline":
            message = f"{name} went offline ({_WHY.get(i.reason or '', i.reason)})"
        elif alert.kind == "online":
            message = f"{name} is online again"
        title = _NOTICE_TITLES.get(alert.kind, title)
        extra: dict[str, Any] = {"clientId": i.client_id, "event": alert.event}
    else:
        extra = {"clientIds": [i.client_id for i in alert.items], "count": len(alert.items),
                 "event": alert.event}
    return Notice(title, message, alert.level, alert.kind == "online", extra)
