"""The hub as the management API sees it: connection views, stats, health, and acting on one
user's connections (ping them, disconnect them).

In a cluster (``cluster`` given), the ``cluster_*`` views ask every node (each answers from its
own hub with :meth:`HubAdmin.answer`) and merge the answers; each entry names its node, and
nodes that did not answer in time are listed. On a single node they are the local views."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

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


class ClusterQuestions(Protocol):
    """Questions to every node of a cluster (:class:`rpad.backend.redis.nodes.ClusterNodes`)."""

    node_id: str

    async def ask(self, kind: str, args: dict[str, Any],
                  timeout_seconds: float = ...) -> tuple[dict[str, Any], list[str]]: ...


# Stats that add up over the nodes of a cluster.
_SUMMED = ("totalConnections", "activeConnections", "activeUsers", "messagesSent",
           "messagesReceived", "messagesPublished", "errors", "internalErrors", "authFailures",
           "rejectedHandshakes", "slowConsumers", "rateLimitedMessages", "conflatedMessages",
           "droppedMessages", "serverListPushes", "serverListBuilds")


class HubAdmin:
    """``config()`` is the hub's configuration in force; ``accepting()`` whether it accepts
    connections."""

    def __init__(self, fanout: Fanout, broker: Broker, counters: HubCounters, *,
                 config: Callable[[], WebSocketConfig], accepting: Callable[[], bool],
                 cluster: ClusterQuestions | None = None) -> None:
        self.cluster = cluster
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

    # -- the whole cluster -----------------------------------------------------------------------

    async def answer(self, kind: str, args: dict[str, Any]) -> Any:
        """This node's answer to a question of the cluster (see :meth:`cluster_connections`)."""
        if kind == "connections":
            return self.connections(args.get("userId"))
        if kind == "online_users":
            return self.online_users()
        if kind == "stats":
            return self.stats()
        if kind == "ping":
            user_id = str(args["userId"])
            if not self.fanout.live(user_id):
                return []
            return await self.ping_user(user_id, float(args["timeoutSeconds"]))
        raise ValueError(f"unknown question {kind!r}")

    async def _ask(self, kind: str, args: dict[str, Any],
                   timeout_seconds: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        assert self.cluster is not None
        if timeout_seconds is None:
            answers, missing = await self.cluster.ask(kind, args)
        else:
            answers, missing = await self.cluster.ask(kind, args, timeout_seconds)
        return answers, {"nodes": sorted(answers), "unreachableNodes": missing}

    async def cluster_connections(self, user_id: str | None = None
                                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every connection (of ``user_id``) on every node, each with its ``node``."""
        if self.cluster is None:
            return self.connections(user_id), {}
        answers, meta = await self._ask("connections", {"userId": user_id})
        conns = [{**c, "node": node} for node, views in sorted(answers.items())
                 for c in views or []]
        return conns, meta

    async def cluster_online_users(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if self.cluster is None:
            return self.online_users(), {}
        answers, meta = await self._ask("online_users", {})
        users: dict[str, dict[str, Any]] = {}
        for node, entries in sorted(answers.items()):
            for e in entries or []:
                u = users.setdefault(e["userId"], {"userId": e["userId"], "connections": 0,
                                                   "nodes": {}})
                u["connections"] += e["connections"]
                u["nodes"][node] = e["connections"]
        return [users[k] for k in sorted(users)], meta

    async def cluster_stats(self) -> dict[str, Any]:
        """This node's stats, with the sums over every node and each node's own figures."""
        local = self.stats()
        if self.cluster is None:
            return local
        answers, meta = await self._ask("stats", {})
        total = dict(local)
        for key in _SUMMED:
            total[key] = sum(int((a or {}).get(key, 0)) for a in answers.values())
        subs: dict[str, int] = {}
        for a in answers.values():
            for topic, n in (a or {}).get("subscribersPerTopic", {}).items():
                subs[topic] = subs.get(topic, 0) + n
        total["subscribersPerTopic"] = dict(sorted(subs.items()))
        total["node"] = self.cluster.node_id
        total["perNode"] = {node: answers[node] for node in sorted(answers)}
        total.update(meta)
        return total

    async def cluster_ping_user(self, user_id: str, timeout_seconds: float
                                ) -> list[dict[str, Any]]:
        if self.cluster is None:
            return await self.ping_user(user_id, timeout_seconds)
        answers, _ = await self._ask("ping", {"userId": user_id,
                                              "timeoutSeconds": timeout_seconds},
                                     timeout_seconds + 2.0)
        return [{**r, "node": node} for node, results in sorted(answers.items())
                for r in results or []]
