"""The notification policy: which presence events become a ``NOTIFICATION`` for people, and
with what words.

A client going offline is a warning that stays until dismissed; one that was offline and is
back is a success that closes by itself. A client heard from for the first time, status
updates and heartbeats notify nobody (dashboards see them on their own topics).
"""

from __future__ import annotations

from typing import Any

import attrs

from .model import (
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    OFFLINE,
    REASON_SHUTDOWN,
    REASON_TIMEOUT,
    Event,
)

_WHY_OFFLINE = {REASON_TIMEOUT: "no heartbeat within its timeout",
                REASON_SHUTDOWN: "its agent shut down"}


@attrs.frozen
class Notice:
    title: str
    message: str
    level: str
    auto_close: bool
    extra: dict[str, Any]


def notice_for(ev: Event) -> Notice | None:
    """The notification an event gives, or None."""
    name = ev.data.get("name") or ev.client_id
    if ev.type == CLIENT_DISCONNECTED:
        why = _WHY_OFFLINE.get(ev.reason or "", ev.reason)
        return Notice("Client offline", f"{name} went offline ({why})", "warning", False,
                      {"clientId": ev.client_id})
    if ev.type == CLIENT_CONNECTED and ev.previous_status == OFFLINE:
        # One that was offline is back (not a client heard from for the first time).
        return Notice("Client online", f"{name} is online again", "success", True,
                      {"clientId": ev.client_id})
    return None
