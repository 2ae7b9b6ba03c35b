"""Periodic tasks of the daemon: the sweeper, the pusher (``SERVER_LIST``) and the stats pusher
(``STATS_UPDATE``).

Each runs until cancelled, on ``trio.sleep_until`` deadlines that advance by exactly one
interval, so the cadence does not drift and tests on a fake clock see exact times.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import trio

from .hub import SERVER_LIST, SERVER_LIST_DELTA, STATS_UPDATE, TOPIC_SERVERS, TOPIC_STATS, Hub
from .presence import Presence
from .registry import Registry

log = logging.getLogger(__name__)


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


async def run_pusher(
    hub: Hub,
    registry: Registry,
    interval_seconds: Callable[[], float],
    *,
    mode: Callable[[], str] = lambda: "full",
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Publish the client list to the ``servers`` topic every ``interval_seconds()`` while it
    has subscribers. A new subscriber gets the full list, ``SERVER_LIST {servers: [client
    view, ...]}``, at once from the hub. Then, by ``mode()`` (``push.mode``, re-read each
    tick):

    - ``"full"``: the full list every tick;
    - ``"delta"``: ``SERVER_LIST_DELTA {changed: [client view, ...], removed: [clientId,
      ...]}``, the clients that changed since the previous tick (nothing when nothing did);
      the full list instead when every view changed (a new default timeout) or when the
      removals since the previous tick are no longer all known.

    The list is built from memory (the registry, never the database) and serialized once per
    tick, from the registry's cached per-client JSON; it is not even rebuilt when nothing
    changed since the last tick.
    """
    # The revision of the last full list handed out (to a new subscriber or in a push).
    snapshot = [registry.revision]

    def build() -> str:
        snapshot[0] = registry.revision
        return registry.servers_json()

    hub.register_state_topic(
        TOPIC_SERVERS, SERVER_LIST, build,
        version=lambda: (registry.revision, registry.default_timeout_seconds))
    task_status.started()
    while True:
        await hub.wait_subscribed(TOPIC_SERVERS)
        deadline = trio.current_time()
        since, generation = snapshot[0], registry.view_generation
        while True:
            deadline += interval_seconds()
            await trio.sleep_until(deadline)
            if not hub.subscribers(TOPIC_SERVERS):
                break
            delta = None
            if mode() == "delta" and registry.view_generation == generation:
                if registry.revision == since:
                    continue  # nothing changed: nothing to say
                delta = registry.delta_json(since)
            if delta is not None:
                hub.publish_json(TOPIC_SERVERS, SERVER_LIST_DELTA, delta)
            else:
                hub.publish_state(TOPIC_SERVERS)
            since, generation = registry.revision, registry.view_generation


async def run_stats_pusher(
    hub: Hub,
    interval_seconds: Callable[[], float],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Publish the hub's figures, ``STATS_UPDATE``, to the ``stats`` topic (admins only) every
    ``interval_seconds()`` while it has subscribers."""
    hub.register_state_topic(TOPIC_STATS, STATS_UPDATE, lambda: json.dumps(
        hub.stats(), separators=(",", ":"), ensure_ascii=False))
    await _push_state(hub, TOPIC_STATS, interval_seconds, task_status)


async def _push_state(hub: Hub, topic: str, interval_seconds: Callable[[], float],
                      task_status: trio.TaskStatus[None]) -> None:
    """While nobody is subscribed this sleeps on the hub (no timer, no work). The first
    subscriber starts a cadence of one push per interval from the moment it subscribed (it
    got the current state at once); later subscribers join that cadence. When the last one
    leaves, the next tick finds nobody and the task goes back to sleep."""
    task_status.started()
    while True:
        await hub.wait_subscribed(topic)
        deadline = trio.current_time()
        while True:
            deadline += interval_seconds()
            await trio.sleep_until(deadline)
            if not hub.subscribers(topic):
                break
            hub.publish_state(topic)
