"""Periodic tasks of the daemon: the sweeper, the ``SERVER_LIST`` pusher and the ``STATS_UPDATE``
pusher.

Each runs until cancelled. The sweeper sleeps until the next client's deadline; the pushers
on ``trio.sleep_until`` deadlines that advance by exactly one interval, so their cadence does
not drift and tests on a fake clock see exact times. The pushers
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

# The sweeper wakes this long after a deadline: a client is offline once its last heartbeat is
# *older* than its timeout, so at the deadline itself it is not yet.
DEADLINE_SLACK_SECONDS = 0.001


class StateTopics(Protocol):
    """The hub's state topics (:class:`rpad.hub.fanout.Fanout`), as the pushers use them."""

    def register_state_topic(self, topic: str, type_: str, build_json: Callable[[], str], *,
                             version: Callable[[], object] | None = None) -> None: ...

    async def wait_subscribed(self, topic: str) -> None: ...

    def subscribers(self, topic: str) -> int: ...

    def publish_state(self, topic: str) -> int: ...

    def publish_state_json(self, topic: str, type_: str, data_json: str) -> int: ...


class Sweeper:
    """Marks clients offline at their own deadline.

    It sleeps until the backend's next deadline (:meth:`PresenceBackend.next_deadline
    <rpad.backend.base.PresenceBackend.next_deadline>`, the moment the next online client
    times out) plus :data:`DEADLINE_SLACK_SECONDS`, and sweeps then; ``interval_seconds()``
    (``presence.check_interval_seconds``, re-read each round so that a reload applies) is only
    an upper bound between two sweeps. A write that can bring the next deadline forward (a
    client coming online, a registration, a reload) calls :meth:`poke`, and the sweeper
    computes its alarm again. The wall clock (deadlines) and Trio's clock (sleeping) are
    related through ``wall_clock()`` at each round, so a wall clock that is stepped moves the
    alarm with it.

    Error handling: a sweep whose commit failed is announced anyway (see
    :meth:`Presence.sweep`); should the backend report the same deadline again after a sweep
    that found nothing (it should not), the sweeper waits for the upper bound instead of
    spinning.
    """

    def __init__(self, presence: Presence, interval_seconds: Callable[[], float], *,
                 wall_clock: Callable[[], float]) -> None:
        self.presence = presence
        self.interval_seconds = interval_seconds
        self.wall_clock = wall_clock
        self._poked = trio.Event()
        # Counters: sweeps run, and those woken by a deadline (the rest by the upper bound).
        self.sweeps = 0
        self.deadline_sweeps = 0
        # Alarms that found the deadline moved later (its client had beaten since).
        self.rearms = 0

    def poke(self) -> None:
        """The next deadline may have come forward: compute the alarm again."""
        self._poked.set()

    def alarm(self, last_sweep: float, stuck: float | None) -> tuple[float, float | None]:
        """(Trio time to sweep at, the deadline it is for, or None for the upper bound)."""
        cap = last_sweep + self.interval_seconds()
        deadline = self.presence.backend.next_deadline()
        if deadline is None or deadline == stuck:
            return cap, None
        at = trio.current_time() + (deadline - self.wall_clock()) + DEADLINE_SLACK_SECONDS
        return (at, deadline) if at < cap else (cap, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        last_sweep = trio.current_time()
        stuck: float | None = None
        while True:
            at, deadline = self.alarm(last_sweep, stuck)
            with trio.move_on_at(at):
                await self._poked.wait()
            if self._poked.is_set():
                self._poked = trio.Event()
                if trio.current_time() < at:
                    continue
            if deadline is not None:
                # The client whose deadline this was may have beaten since (deadlines only
                # move later without a poke): then there is nothing to sweep yet.
                now_deadline = self.presence.backend.next_deadline()
                if now_deadline is not None and now_deadline > self.wall_clock():
                    self.rearms += 1
                    continue
            last_sweep = trio.current_time()
            events = await self.presence.sweep()
            self.sweeps += 1
            if deadline is not None:
                self.deadline_sweeps += 1
            stuck = deadline if deadline is not None and not events else None
            if events:
                log.debug("sweep marked %d clients offline", len(events))


async def run_sweeper(
    presence: Presence,
    interval_seconds: Callable[[], float],
    *,
    wall_clock: Callable[[], float] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A :class:`Sweeper` on the presence's wall clock, run until cancelled."""
    sweeper = Sweeper(presence, interval_seconds, wall_clock=wall_clock or presence.wall_clock)
    presence.on_deadline_change = sweeper.poke
    await sweeper.run(task_status=task_status)


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
