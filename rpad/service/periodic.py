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
# Two sweeps at deadlines are at least this far apart: a fleet whose deadlines come thousands
# a second is swept in batches (each one commit), not once per client.
MIN_SWEEP_GAP_SECONDS = 0.005
# A sweep is marked in memory at once and committed in the background; at most this many
# sweeps wait on their commit (a stalled disk holds the sweeper back, not the memory).
MAX_SWEEPS_IN_FLIGHT = 32


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

    A sweep marks the clients in the view at once; its commit (a disk's fsync, which can take
    long) and its announcement follow in a task of its own, so the next deadline is not kept
    waiting behind it (at most :data:`MAX_SWEEPS_IN_FLIGHT` such tasks). Two sweeps are at
    least :data:`MIN_SWEEP_GAP_SECONDS` apart.

    Error handling: a sweep whose commit failed is announced anyway (see
    :meth:`Presence.sweep`); should the backend report the same deadline again after a sweep
    (it should not), the sweeper waits for the upper bound instead of spinning.
    """

    def __init__(self, presence: Presence, interval_seconds: Callable[[], float], *,
                 wall_clock: Callable[[], float]) -> None:
        self.presence = presence
        self.interval_seconds = interval_seconds
        self.wall_clock = wall_clock
        self._poked = trio.Event()
        self._in_flight = trio.Semaphore(MAX_SWEEPS_IN_FLIGHT)
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
        async with trio.open_nursery() as sweeps:
            task_status.started()
            await self._loop(sweeps)

    async def _loop(self, sweeps: trio.Nursery) -> None:
        last_sweep = trio.current_time()
        last_was_deadline = False
        stuck: float | None = None
        while True:
            at, deadline = self.alarm(last_sweep, stuck)
            if deadline is not None and last_was_deadline:
                at = max(at, last_sweep + MIN_SWEEP_GAP_SECONDS)
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
            await self._in_flight.acquire()
            last_sweep = trio.current_time()
            last_was_deadline = deadline is not None
            self.sweeps += 1
            if deadline is not None:
                self.deadline_sweeps += 1
            swept = trio.Event()
            sweeps.start_soon(self._sweep, swept)
            await swept.wait()  # the view is marked; its commit may still be running
            after = self.presence.backend.next_deadline()
            stuck = deadline if deadline is not None and after == deadline else None

    async def _sweep(self, swept: trio.Event) -> None:
        """One sweep: marked at once (``swept`` is set), announced once durable."""
        try:
            events = await self.presence.sweep(swept=swept.set)
            if events:
                log.debug("sweep marked %d clients offline", len(events))
        finally:
            swept.set()
            self._in_flight.release()


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
