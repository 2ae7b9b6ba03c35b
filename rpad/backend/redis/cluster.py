"""``backend = "redis"``: the parts of one cluster node, built and run together.

:class:`RedisCluster` holds this node's :class:`~.link.Link` and the backends built on it:
:class:`~.presence.RedisPresence`, :class:`~.broker.RedisBroker` (made once the hub's
delivery exists), :class:`~.failures.RedisFailureCounter`, :class:`~.nodes.ClusterNodes` and
:class:`~.alerts.RedisAlertStore` (the alerts' shared state; the alert lease is kept by the
service that runs the policy, through :meth:`~.alerts.RedisAlertStore.lead`).
It reports the node's health (Redis reachable or not, how stale the view is, durability) for
``/api/v1/health`` and ``/metrics``, and tells this node's dashboards when Redis becomes
unreachable and when it is back (``SYSTEM_MESSAGE`` on ``system``, through ``on_degraded``).

Resource handling: :meth:`RedisCluster.run` connects (waiting for Redis), then runs every
part until cancelled; the parts stop before the connection closes (the sweep lease is given
back, this node leaves the nodes hash). Error handling: see each part; DurabilityRefused
propagates (rpad refuses to start).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ...config import Config
from ...core.jsonenc import dumps, envelope
from ...core.registry import Registry
from ...core.times import iso
from ...core.topics import SYSTEM_MESSAGE, TOPIC_SYSTEM
from ..base import Delivery
from .alerts import RedisAlertStore
from .broker import RedisBroker
from .failures import RedisFailureCounter
from .keys import Keys
from .link import Link, RedisSettings
from .nodes import ClusterNodes
from .presence import RedisPresence

log = logging.getLogger(__name__)


# The systemd credential rpad reads when cluster.redis_password_file is empty.
PASSWORD_CREDENTIAL = "redis.password"


def read_password(path: str) -> str | None:
    """The Redis password from ``cluster.redis_password_file`` (one line; surrounding
    whitespace is not part of it); with none configured, from the systemd credential
    ``redis.password`` if there is one; else None (no password). Raises OSError."""
    if not path:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        cred = Path(cred_dir) / PASSWORD_CREDENTIAL if cred_dir else None
        if cred is None or not cred.exists():
            return None
        path = str(cred)
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


class RedisCluster:
    def __init__(self, cfg: Config, registry: Registry, *, epoch: str,
                 wall_clock: Callable[[], float]) -> None:
        cl = cfg.cluster
        self.node_id = cl.node_name
        self.durability = cl.durability
        self.wall_clock = wall_clock
        self.epoch_candidate = epoch
        self.keys = Keys(cl.key_prefix)
        self.link = Link(RedisSettings(cl.redis_url, read_password(cl.redis_password_file),
                                       self.node_id, cl.key_prefix, cl.durability),
                         wall_clock=wall_clock)
        self.presence = RedisPresence(self.link, self.keys, registry, cfg.presence,
                                      node_id=self.node_id, wall_clock=wall_clock)
        self.failures = RedisFailureCounter(self.link, self.keys,
                                            cfg.auth.max_failures_per_minute,
                                            node_id=self.node_id, wall_clock=wall_clock)
        self.nodes = ClusterNodes(self.link, self.keys, node_id=self.node_id,
                                  wall_clock=wall_clock)
        self.alerts = RedisAlertStore(self.link, self.keys, self.presence, node_id=self.node_id)
        self.broker: RedisBroker | None = None
        self.history_size = cfg.websocket.history_size

    def make_broker(self, delivery: Delivery) -> RedisBroker:
        self.broker = RedisBroker(self.link, self.keys, delivery, node_id=self.node_id,
                                  epoch=self.epoch_candidate, history_size=self.history_size,
                                  wall_clock=self.wall_clock)
        return self.broker

    def tell_dashboards(self, delivery: Delivery,
                        notification: Callable[..., dict[str, Any]]) -> None:
        """When Redis becomes unreachable, and when it is back, send this node's connections a
        ``SYSTEM_MESSAGE`` on ``system`` (straight to them: the bus is what is missing), outside
        the topic's sequence (``seq`` null). ``notification`` builds its data
        (:meth:`rpad.service.feeds.Feeds.notification`)."""

        def changed(up: bool) -> None:
            text = ("rpad's cluster backend is back: live updates resume" if up else
                    "rpad lost its cluster's shared backend: changes are refused for now and "
                    "what you see may be stale")
            data = notification(title="Cluster restored" if up else "Cluster degraded",
                                message=text, level="success" if up else "warning",
                                extra={"degraded": not up})
            delivery.deliver(TOPIC_SYSTEM, SYSTEM_MESSAGE, envelope(
                SYSTEM_MESSAGE, TOPIC_SYSTEM, None, iso(self.wall_clock()), dumps(data)))

        self.link.on_state(changed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.broker is not None, "make_broker first"
        log.info("cluster node %s: Redis at %s:%d, keys under %s", self.node_id,
                 self.link.endpoint.host, self.link.endpoint.port, self.keys.prefix)
        # The connection outlives the parts: when the node stops, they finish first (the
        # lease given back, this node's entry removed), then the connection closes.
        link_scope = trio.CancelScope()

        async def run_link(task_status: trio.TaskStatus[None]) -> None:
            with link_scope:
                await self.link.run(task_status=task_status)

        async with trio.open_nursery() as base:
            await base.start(run_link)  # (a stop while it waits for Redis cancels it)
            link_scope.shield = True
            try:
                async with trio.open_nursery() as parts:
                    await parts.start(self.broker.run)
                    await parts.start(self.presence.run)
                    await parts.start(self.failures.run)
                    await parts.start(self.nodes.run)
                    await parts.start(self.alerts.run)
                    task_status.started()
                    await trio.sleep_forever()
            finally:
                link_scope.shield = False
                link_scope.cancel()

    # -- what the node says about itself ---------------------------------------------------------

    def stale_seconds(self) -> float | None:
        """How long this node's view has not been kept current (Redis unreachable), or None."""
        since = self.link.down_since
        return None if since is None else trio.current_time() - since

    def health(self) -> dict[str, Any]:
        stale = self.stale_seconds()
        return {"cluster": {
            "backend": "redis",
            "node": self.node_id,
            "redis": "up" if self.link.up else "unreachable",
            "redisVersion": self.link.redis_version,
            "stale": stale is not None,
            "staleSeconds": round(stale, 3) if stale is not None else None,
            "durability": self.durability,
            "durable": self.link.durable,
            "sweepLeaseHolder": self.presence.lease_holder,
            "alertLeaseHolder": self.alerts.holder,
            "epoch": self.broker.epoch if self.broker is not None else None,
        }}

    def metrics_snapshot(self) -> dict[str, Any]:
        stale = self.stale_seconds()
        p = self.presence
        return {
            "up": self.link.up,
            "stale_seconds": stale or 0.0,
            "durable": self.link.durable,
            "round_trips": self.link.round_trips,
            "failures": self.link.failures,
            "heartbeat_groups": p.groups_sent,
            "heartbeats_sent": p.beats_sent,
            "sweep_lease": p.lease_token is not None,
            "alert_lease": self.alerts.lease.token is not None,
            "alert_writes_refused": self.alerts.refusals,
            "gaps_filled": self.broker.gaps_filled if self.broker is not None else 0,
        }
