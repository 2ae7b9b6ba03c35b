"""Periodic tasks of the daemon: the sweeper, the ``SERVER_LIST`` pusher and the ``STATS_UPDATE``
pusher.

Each runs until cancelled, on ``trio.sleep_until`` deadlines that advance by exactly one
interval, so the cadence does not drift and tests on a fake clock see exact times. The pushers
register their state topics when they are built (before the hub accepts anyone), and sleep on
the hub while nobody is subscribed (no timer, no work).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import trio

from ..backend.base import PresenceView
from ..core.jsonenc import dumps
from ..core.topics import SERVER_LIST, SERVER_LIST_DELTA, STATS_UPDATE, TOPIC_SERVERS, TOPIC_STATS
from .presence import Presence

log = logging.getLogger(__name__)


class StateTopics(Protocol):
    """The hub's state topics (:class:`rpad.hub.fanout.Fanout`), as the pushers use them."""

    def register_state_topic(self, topic: str, type_: str, build_json: Callable[[], str], *,
                             version: Callable[[], object] | None = None) -> None: ...

    async def wait_subscribed(self, topic: str) -> None: ...

    def subscribers(self, topic: str) -> int: ...

    def publish_state(self, topic: str) -> int: ...

    def publish_state_json(self, topic: str, type_: str, data_json: str) -> int: ...


async def run_sweeper(
    presence: Presence,
    interval_seconds: Callable[[], float],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every ``interval_seconds()`` (re-read each round, so a reload applies), mark clients
    whose last heartbeat is older than their timeout offline."""
    task_status.started()
    deadline = trio.current_time()
    while True:
        deadline += interval_seconds()
        await trio.sleep_until(deadline)
        events = await presence.sweep()
        if events:
            log.debug("sweep marked %d clients offline", len(events))


class ServerListPusher:
    """Publishes the client list to the ``servers`` topic every ``interval_seconds()`` while it
    has subscribers. A new subscriber gets the full list, ``SERVER_LIST {servers: [client view,
    ...]}``, at once from the hub. Then, by ``mode()`` (``push.mode``, re-read each tick):

    - ``"full"``: the full list every tick;
    - ``"delta"``: ``SERVER_LIST_DELTA {changed: [client view, ...], removed: [clientId,
      ...]}``, the clients that changed since the previous tick (nothing when nothing did);
      the full list instead when every view changed (a new default timeout) or when the
      removals since the previous tick are no longer all known.

    The list is built from memory (the node's view, never the database) and serialized once
    per tick, from the view's cached per-client JSON; it is not even rebuilt when nothing
    changed since the last tick."""

    def __init__(self, fanout: StateTopics, view: PresenceView, interval_seconds: Callable[[], float],
                 *, mode: Callable[[], str] = lambda: "full") -> None:
        self.fanout = fanout
        self.view = view
        self.interval_seconds = interval_seconds
        self.mode = mode
        # The revision of the last full list handed out (to a new subscriber or in a push).
        self._snapshot = view.revision
        fanout.register_state_topic(TOPIC_SERVERS, SERVER_LIST, self._build,
                                    version=lambda: (view.revision, view.default_timeout_seconds))

    def _build(self) -> str:
        self._snapshot = self.view.revision
        return self.view.servers_json()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        fanout, view = self.fanout, self.view
        task_status.started()
        while True:
            await fanout.wait_subscribed(TOPIC_SERVERS)
            deadline = trio.current_time()
            since, generation = self._snapshot, view.view_generation
            while True:
                deadline += self.interval_seconds()
                await trio.sleep_until(deadline)
                if not fanout.subscribers(TOPIC_SERVERS):
                    break
                delta = None
                if self.mode() == "delta" and view.view_generation == generation:
                    if view.revision == since:
                        continue  # nothing changed: nothing to say
                    delta = view.delta_json(since)
                if delta is not None:
                    fanout.publish_state_json(TOPIC_SERVERS, SERVER_LIST_DELTA, delta)
                else:
                    fanout.publish_state(TOPIC_SERVERS)
                since, generation = view.revision, view.view_generation


class StatsPusher:
    """Publishes the hub's figures, ``STATS_UPDATE``, to the ``stats`` topic (admins only) every
    ``interval_seconds()`` while it has subscribers. The first subscriber starts a cadence of
    one push per interval from the moment it subscribed (it got the current state at once);
    later subscribers join that cadence. When the last one leaves, the next tick finds nobody
    and the task goes back to sleep."""

    def __init__(self, fanout: StateTopics, stats: Callable[[], dict[str, Any]],
                 interval_seconds: Callable[[], float]) -> None:
        self.fanout = fanout
        self.interval_seconds = interval_seconds
        fanout.register_state_topic(TOPIC_STATS, STATS_UPDATE, lambda: dumps(stats()))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        fanout = self.fanout
        task_status.started()
        while True:
            await fanout.wait_subscribed(TOPIC_STATS)
            deadline = trio.current_time()
            while True:
                deadline += self.interval_seconds()
                await trio.sleep_until(deadline)
                if not fanout.subscribers(TOPIC_STATS):
                    break
                fanout.publish_state(TOPIC_STATS)
