"""WebSocket close codes (SPEC §5), the names under which closes are counted, and the hub's
counters."""

from __future__ import annotations

from collections import Counter

import attrs

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_ABNORMAL = 1006
CLOSE_ORIGIN = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_UNAUTHORIZED = 4001
CLOSE_PROTOCOL = 4002
CLOSE_FORBIDDEN = 4003
CLOSE_UNKNOWN_CLIENT = 4004
CLOSE_SLOW_CONSUMER = 4008
CLOSE_TOKEN_EXPIRED = 4009
CLOSE_BY_ADMIN = 4010
CLOSE_AGENT_REPLACED = 4012
CLOSE_TOO_MANY = 4029
CLOSE_KEEPALIVE = 4408

# The names under which disconnections are counted.
CLOSE_REASON_NAMES = {
    CLOSE_GOING_AWAY: "going_away",
    CLOSE_ABNORMAL: "connection_lost",
    CLOSE_ORIGIN: "origin_not_allowed",
    CLOSE_TOO_BIG: "message_too_big",
    CLOSE_INTERNAL_ERROR: "internal_error",
    CLOSE_UNAUTHORIZED: "unauthorized",
    CLOSE_PROTOCOL: "protocol_violation",
    CLOSE_UNKNOWN_CLIENT: "unknown_client",
    CLOSE_AGENT_REPLACED: "agent_channel_replaced",
    CLOSE_FORBIDDEN: "forbidden",
    CLOSE_SLOW_CONSUMER: "slow_consumer",
    CLOSE_TOKEN_EXPIRED: "token_expired",
    CLOSE_BY_ADMIN: "disconnected_by_admin",
    CLOSE_TOO_MANY: "too_many_connections",
    CLOSE_KEEPALIVE: "keepalive_timeout",
}
# WebSocket close reasons are limited to 123 bytes of UTF-8.
MAX_CLOSE_REASON_BYTES = 123


def close_reason_name(code: int) -> str:
    return CLOSE_REASON_NAMES.get(code, "client_closed")


def truncate_reason(reason: str) -> str:
    data = reason.encode("utf-8", "replace")
    return data[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


@attrs.define
class HubCounters:
    """The hub's counters (read by its stats and by the metrics exporter)."""

    total_connections: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    disconnections: Counter[str] = attrs.Factory(Counter)
    errors: int = 0
    internal_errors: int = 0
    auth_failures: int = 0
    rejected_handshakes: int = 0
    slow_consumers: int = 0
    # Client messages dropped by the per-connection rate limit.
    rate_limited: int = 0
    conflated: int = 0
    # Messages discarded from the queues of closing connections.
    dropped: int = 0
