"""Topics and message types of the WebSocket protocol (SPEC §5).

Built-in topics carry what rpad itself says: ``client_status`` (transitions), ``heartbeat``,
``servers`` (the client list, a state topic), ``notifications``, ``system`` (broadcasts, every
connection holds it) and ``stats`` (admins, a state topic). Any other name matching
:data:`TOPIC_RE` is an app topic (for example ``task.42``). State topics keep no history: a
subscriber gets the current state at once instead.
"""

from __future__ import annotations

import re

TOPIC_CLIENT_STATUS = "client_status"
TOPIC_HEARTBEAT = "heartbeat"
TOPIC_SERVERS = "servers"
TOPIC_NOTIFICATIONS = "notifications"
TOPIC_SYSTEM = "system"
TOPIC_STATS = "stats"
BUILTIN_TOPICS = frozenset({TOPIC_CLIENT_STATUS, TOPIC_HEARTBEAT, TOPIC_SERVERS,
                            TOPIC_NOTIFICATIONS, TOPIC_SYSTEM, TOPIC_STATS})
# Built-in topics every viewer, service and admin may subscribe to.
VIEWER_TOPICS = BUILTIN_TOPICS - {TOPIC_STATS}
# Topics only rpad itself publishes to.
RPAD_ONLY_TOPICS = frozenset({TOPIC_CLIENT_STATUS, TOPIC_HEARTBEAT, TOPIC_SERVERS, TOPIC_STATS})
# Topics whose messages are complete states, built by each node from its own view.
STATE_TOPICS = frozenset({TOPIC_SERVERS, TOPIC_STATS})
TOPIC_RE = re.compile(r"[a-z][a-z0-9_.:-]{0,127}")
TYPE_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")

SERVER_LIST = "SERVER_LIST"
# push.mode = "delta": the clients that changed since the previous push, and those removed.
SERVER_LIST_DELTA = "SERVER_LIST_DELTA"
# A windowed subscription's page of the fleet (rpad/hub/windows.py).
SERVER_WINDOW = "SERVER_WINDOW"
STATS_UPDATE = "STATS_UPDATE"
NOTIFICATION = "NOTIFICATION"
SYSTEM_MESSAGE = "SYSTEM_MESSAGE"
CONNECTION_ESTABLISHED = "CONNECTION_ESTABLISHED"
SUBSCRIBED = "SUBSCRIBED"
UNSUBSCRIBED = "UNSUBSCRIBED"
PONG = "PONG"
ERROR = "ERROR"
TOKEN_REFRESHED = "TOKEN_REFRESHED"
PUBLISHED = "PUBLISHED"
# Complete states: a newer one makes a queued older one worthless.
CONFLATABLE_TYPES = frozenset({SERVER_LIST, SERVER_WINDOW, STATS_UPDATE})
NOTIFICATION_LEVELS = ("info", "success", "warning", "error", "urgent")
