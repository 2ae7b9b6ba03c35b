"""The presence model: a client, the events that happen to it, and their names.

A client is ``online`` while its last heartbeat is younger than its timeout: the registered
``heartbeatTimeoutSeconds``, else the configured default, and never less than twice the
agent's declared ``intervalSeconds``. ``unknown`` means registered but never heard from.
"""

from __future__ import annotations

from typing import Any

import attrs

from .times import iso

ONLINE = "online"
OFFLINE = "offline"
UNKNOWN = "unknown"

# Event types (the WebSocket message types of the client_status and heartbeat topics).
CLIENT_CONNECTED = "CLIENT_CONNECTED"
CLIENT_DISCONNECTED = "CLIENT_DISCONNECTED"
CLIENT_STATUS_UPDATE = "CLIENT_STATUS_UPDATE"
CLIENT_REMOVED = "CLIENT_REMOVED"
HEARTBEAT_RECEIVED = "HEARTBEAT_RECEIVED"

# Reasons recorded in a client's status history.
REASON_HEARTBEAT = "heartbeat"
REASON_TIMEOUT = "timeout"
REASON_SHUTDOWN = "agent_shutdown"
REASON_REMOVED = "removed"
REASON_REGISTERED = "registered"

@attrs.define(slots=True, eq=False)
class Client:
    client_id: str
    registered_at: float
    name: str | None = None
    tags: list[str] = attrs.Factory(list)
    metadata: dict[str, Any] = attrs.Factory(dict)
    # Registered override of the default timeout.
    timeout_seconds: float | None = None
    # True when an admin registered it (manual mode keeps it after removal of... nothing).
    registered: bool = False
    status: str = UNKNOWN
    reported_status: str | None = None
    version: str | None = None
    ip_address: str | None = None
    os_type: str | None = None
    interval_seconds: float | None = None
    last_heartbeat_at: float | None = None
    online_since: float | None = None
    offline_since: float | None = None
    clock_skew_seconds: float | None = None
    latest_metrics: dict[str, float] | None = None
    # What the agent's control channel advertises (rpad.hub.agent_link); None while there is
    # no channel. Not stored: channels do not survive a restart of rpad.
    capabilities: dict[str, Any] | None = None
    # Bumped on every change, so a delta push can tell what changed since the last one.
    revision: int = 0
    # The view serialized as JSON, valid while (revision, view generation) is unchanged.
    _json_key: tuple[int, int] = attrs.field(default=(-1, -1), init=False, repr=False)
    _json: str = attrs.field(default="", init=False, repr=False)
    # Position in the registry (its insertion order), so the sweep reports in a fixed order.
    _order: int = attrs.field(default=0, init=False, repr=False)

    def effective_timeout(self, default: float) -> float:
        timeout = self.timeout_seconds if self.timeout_seconds is not None else default
        if self.interval_seconds is not None:
            timeout = max(timeout, 2 * self.interval_seconds)
        return timeout

    def view(self, default_timeout: float) -> dict[str, Any]:
        """The client view of SPEC §4 (camelCase, ISO times)."""
        return {
            "clientId": self.client_id,
            "name": self.name,
            "status": self.status,
            "reportedStatus": self.reported_status,
            "version": self.version,
            "ipAddress": self.ip_address,
            "osType": self.os_type,
            "tags": list(self.tags),
            "metadata": self.metadata,
            "lastHeartbeatAt": iso(self.last_heartbeat_at),
            "onlineSince": iso(self.online_since),
            "offlineSince": iso(self.offline_since),
            "registeredAt": iso(self.registered_at),
            "clockSkewSeconds": self.clock_skew_seconds,
            "heartbeatTimeoutSeconds": self.effective_timeout(default_timeout),
            "intervalSeconds": self.interval_seconds,
            "latestMetrics": self.latest_metrics,
            "capabilities": self.capabilities,
        }


@attrs.frozen(slots=True)
class Event:
    """Something that happened to a client. ``data`` is the message payload (a client view,
    with ``reason`` for disconnects), built when the event happened."""

    type: str
    client_id: str
    at: float
    data: dict[str, Any]
    reason: str | None = None
    # For CLIENT_CONNECTED / CLIENT_DISCONNECTED: the status it left (unknown for a client
    # never heard from before, offline for one that came back).
    previous_status: str | None = None

    @property
    def is_transition(self) -> bool:
        """A change of online/offline state, recorded in the client's history."""
        return self.type in (CLIENT_CONNECTED, CLIENT_DISCONNECTED, CLIENT_REMOVED)


@attrs.frozen(slots=True)
class HeartbeatOutcome:
    client: Client
    events: list[Event]
    timeout_seconds: float
    created: bool
