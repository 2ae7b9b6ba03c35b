"""The hub as the management API sees it: connection views, stats, health, and acting on one
user's connections (ping them, disconnect them)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ..backend.base import Broker
from ..config import WebSocketConfig
from ..core.times import iso
from ..core.topics import TOPIC_SERVERS
from .codes import HubCounters
from .fanout import Fanout

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)

PING_USER_TIMEOUT_SECONDS = 5.0
MAX_PING_USER_TIMEOUT_SECONDS = 30.0


class HubAdmin:
    """``config()`` is the hub's configuration in force; ``accepting()`` whether it accepts
    connections."""

    def __init__(self, fanout: Fanout, broker: Broker, counters: HubCounters, *,
                 config: Callable[[], WebSocketConfig], accepting: Callable[[], bool]) -> None:
        self.fanout = fanout
        self.broker = broker
        self.counters = counters
        self.config = config
        self.accepting = accepting

    def connection_view(self, c: Connection) -> dict[str, Any]:
        return {
            "connectionId": c.id,
            "userId": c.user_id,
            "role": c.principal.role,
            "connectedAt": iso(c.connected_at),
            "lastPing": iso(c.last_ping),
            "lastPong": iso(c.last_pong),
            "isAlive": c.is_alive,
            "rttMs": round(c.rtt_seconds * 1000, 3) if c.rtt_seconds is not None else None,
            "topics": sorted(c.topics),
            "queued": c.queued,
            "messagesSent": c.messages_sent,
            "messagesReceived": c.messages_received,
            "metadata": c.metadata,
        }

    def connections(self, user_id: str | None = None) -> list[dict[str, Any]]:
        fanout = self.fanout
        if user_id is None:
            conns = list(fanout.connections.values())
        else:
            conns = list(fanout.by_user.get(user_id, {}).values())
        return [self.connection_view(c) for c in conns]

    def online_users(self) -> list[dict[str, Any]]:
        return [{"userId": user, "connections": len(conns)}
                for user, conns in sorted(self.fanout.by_user.items())]

    async def disconnect_user(self, user_id: str, reason: str) -> int:
        """Close every connection of ``user_id`` with 4010; returns how many."""
        n = await self.broker.disconnect_user(user_id, reason)
        if n:
            log.info("disconnected %d connections of user %s: %s", n, user_id, reason)
        return n

    async def ping_user(self, user_id: str,
                        timeout_seconds: float = PING_USER_TIMEOUT_SECONDS) -> list[dict[str, Any]]:
        """Ping each connection of ``user_id`` at once; round trips in milliseconds."""
        conns = self.fanout.live(user_id)
        results: dict[str, dict[str, Any]] = {}

        async def one(c: Connection) -> None:
            rtt = await c.ping(timeout_seconds)
            if rtt is None:
                results[c.id] = {"connectionId": c.id, "ok": False, "rttMs": None,
                                 "error": "closed" if c.close_code is not None else "timeout"}
            else:
                results[c.id] = {"connectionId": c.id, "ok": True, "rttMs": round(rtt * 1000, 3)}

        async with trio.open_nursery() as nursery:
            for c in conns:
                nursery.start_soon(one, c)
        return [results[c.id] for c in conns]

    def stats(self) -> dict[str, Any]:
        n, fanout, config = self.counters, self.fanout, self.config()
        servers = fanout.state.get(TOPIC_SERVERS)
        brokered = self.broker.stats()
        return {
            "epoch": self.broker.epoch,
            "totalConnections": n.total_connections,
            "activeConnections": len(fanout.connections),
            "activeUsers": len(fanout.by_user),
            "messagesSent": n.messages_sent,
            "messagesReceived": n.messages_received,
            "messagesPublished": brokered["messagesPublished"] + fanout.published,
            "disconnections": dict(sorted(n.disconnections.items())),
            "errors": n.errors,
            "internalErrors": n.internal_errors,
            "authFailures": n.auth_failures,
            "rejectedHandshakes": n.rejected_handshakes,
            "slowConsumers": n.slow_consumers,
            "rateLimitedMessages": n.rate_limited,
            "conflatedMessages": n.conflated,
            "droppedMessages": n.dropped,
            "subscribersPerTopic": dict(fanout.subscriber_counts()),
            "topics": brokered["topics"],
            "serverListPushes": servers.pushes if servers is not None else 0,
            "serverListBuilds": servers.builds if servers is not None else 0,
            "queueSize": config.queue_size,
            "historySize": config.history_size,
        }

    def metrics_snapshot(self) -> dict[str, Any]:
        """For the metrics exporter (``HubStats``)."""
        n = self.counters
        return {
            "connections": len(self.fanout.connections),
            "subscribers": dict(self.fanout.subscriber_counts()),
            "sent": n.messages_sent,
            "conflated": n.conflated,
            "dropped": n.dropped,
            "disconnects": dict(n.disconnections),
        }

    def health(self) -> dict[str, Any]:
        accepting = self.accepting()
        return {
            "status": "ok" if accepting else "stopping",
            "accepting": accepting,
            "activeConnections": len(self.fanout.connections),
            "epoch": self.broker.epoch,
        }
