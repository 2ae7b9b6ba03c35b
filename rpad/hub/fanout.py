"""Local delivery: this node's connections, who is subscribed to what, and handing a message to
each subscriber's outbox without ever waiting (the :class:`~rpad.backend.base.Delivery` a
broker delivers to).

A message arrives serialized once; the same string goes to every subscriber. When an outbox
is full, a conflatable message replaces the stale one (latest wins); any other message closes
that connection with 4008 (slow consumer) and the client resumes with ``since``. Frame
batching connections gather topic messages; one flusher task moves them to their outboxes as
one frame at most once per :data:`BATCH_DELAY_SECONDS` each (see :meth:`Fanout.run_flusher`).

State topics (``servers``, ``stats``) are node-local complete states: ``build_json()`` gives the
current state, sent to each new subscriber at once and pushed by the periodic tasks; their seq
counts this node's pushes (they keep no history).

Resource handling: :meth:`Fanout.run_flusher` runs in the hub's nursery. Error handling: none
of this awaits a socket; a full outbox closes only its own connection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import attrs
import trio

from ..core.jsonenc import envelope
from ..core.times import iso
from ..core.topics import BUILTIN_TOPICS, CONFLATABLE_TYPES
from .codes import CLOSE_BY_ADMIN, CLOSE_SLOW_CONSUMER, HubCounters

if TYPE_CHECKING:
    from .connection import Connection

# A batching connection gets at most one frame of topic messages per this long: the first
# after a quiet spell at once, the next ones gathered until this long after it (events
# published one by one, as app events are, would otherwise each go out alone while the writers
# keep up) ...
BATCH_DELAY_SECONDS = 0.005
# ... per this many batching connections given a frame in the same round (1,000 dashboards
# watching a busy fleet get a frame every 50 ms at most).
BATCH_CONNECTIONS_PER_DELAY = 100
SLOW_CONSUMER_REASON = "slow consumer: outgoing queue full"


class _Subscribers:
    __slots__ = ("active", "connections")

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        # Set while the topic has subscribers (the pushers sleep on it).
        self.active = trio.Event()


@attrs.define
class StateTopic:
    type: str
    # The complete current state, as JSON text.
    build_json: Callable[[], str]
    # A cheap value that changes whenever build_json() would return something else (optional).
    version: Callable[[], object] | None
    cached: tuple[object, str] | None = None
    seq: int = 0
    # How often the state was serialized, and how often it was published to the topic.
    builds: int = 0
    pushes: int = 0


class Fanout:
    def __init__(self, counters: HubCounters, *, wall_clock: Callable[[], float]) -> None:
        self.counters = counters
        self.wall_clock = wall_clock
        self.connections: dict[str, Connection] = {}
        self.by_user: dict[str, dict[str, Connection]] = {}
        self._topics: dict[str, _Subscribers] = {name: _Subscribers() for name in BUILTIN_TOPICS}
        self.state: dict[str, StateTopic] = {}
        # Messages this node published on its own (state topics).
        self.published = 0
        # Called with (connection, topic) when a connection leaves a topic (windowed
        # subscriptions hold topics outside this module's subscriber sets).
        self.leave_hooks: list[Callable[[Connection, str], None]] = []
        # Batching connections with topic messages waiting for the flusher.
        self._dirty: list[Connection] = []
        self._dirty_event = trio.Event()

    # -- connections ---------------------------------------------------------------------------

    def add(self, c: Connection) -> None:
        self.connections[c.id] = c
        self.by_user.setdefault(c.user_id, {})[c.id] = c

    def remove(self, c: Connection) -> None:
        self.leave_all(c)
        self.connections.pop(c.id, None)
        mine = self.by_user.get(c.user_id)
        if mine is not None:
            mine.pop(c.id, None)
            if not mine:
                del self.by_user[c.user_id]

    def live(self, user_id: str) -> list[Connection]:
        """The user's connections that are not closing."""
        return [c for c in self.by_user.get(user_id, {}).values() if c.close_code is None]

    def user_connections(self, user_id: str) -> int:
        return len(self.live(user_id))

    # -- subscriptions -------------------------------------------------------------------------

    def join(self, c: Connection, topic: str) -> None:
        c.topics.add(topic)
        subs = self._topics.get(topic)
        if subs is None:
            subs = self._topics[topic] = _Subscribers()
        subs.connections.add(c)
        if not subs.active.is_set():
            subs.active.set()

    def leave(self, c: Connection, topic: str) -> None:
        c.topics.discard(topic)
        for hook in self.leave_hooks:
            hook(c, topic)
        subs = self._topics.get(topic)
        if subs is None:
            return
        subs.connections.discard(c)
        if not subs.connections:
            if topic in BUILTIN_TOPICS:
                if subs.active.is_set():
                    subs.active = trio.Event()
            else:
                del self._topics[topic]

    def leave_all(self, c: Connection) -> None:
        for topic in list(c.topics):
            self.leave(c, topic)

    def plain_subscribers(self, topic: str) -> set[Connection]:
        """The connections this module delivers ``topic`` to (not windowed ones)."""
        subs = self._topics.get(topic)
        return subs.connections if subs is not None else set()

    def subscribers(self, topic: str) -> int:
        subs = self._topics.get(topic)
        return len(subs.connections) if subs is not None else 0

    def subscriber_counts(self) -> Iterator[tuple[str, int]]:
        """(topic, subscribers) of every topic that has some, sorted."""
        for name in sorted(self._topics):
            n = len(self._topics[name].connections)
            if n:
                yield name, n

    async def wait_subscribed(self, topic: str) -> None:
        """Return once ``topic`` (a built-in topic) has at least one subscriber."""
        await self._topics[topic].active.wait()

    # -- delivery (never waits) ----------------------------------------------------------------

    def deliver(self, topic: str, type_: str, text: str) -> int:
        """Hand an envelope to the topic's subscribers; returns how many were reached."""
        subs = self._topics.get(topic)
        if subs is None or not subs.connections:
            return 0
        connections = subs.connections
        if type_ in CONFLATABLE_TYPES:
            key = f"{topic} {type_}"
            for c in connections:
                if c.outbox.offer_latest(key, text):
                    self.counters.conflated += 1
            return len(connections)
        slow: list[Connection] = []
        for c in connections:
            box = c.outbox
            if box.batch:  # gathered until the flusher's next round
                if not box.dirty:
                    self.mark_dirty(c)
                if not box.add_pending(text):
                    slow.append(c)
            elif not box.offer(text):
                slow.append(c)
        for c in slow:
            c.close(CLOSE_SLOW_CONSUMER, SLOW_CONSUMER_REASON)
        return len(connections)  # the slow ones have left

    def send(self, c: Connection, text: str) -> None:
        """One message to one connection (a reply, a direct message); a full queue closes it."""
        if not c.outbox.offer(text):
            c.close(CLOSE_SLOW_CONSUMER, SLOW_CONSUMER_REASON)

    def deliver_to_user(self, user_id: str, text: str) -> int:
        conns = self.live(user_id)
        for c in conns:
            self.send(c, text)
        return len(conns)

    def disconnect_user(self, user_id: str, reason: str) -> int:
        """Close every connection of ``user_id`` with 4010; returns how many."""
        conns = self.live(user_id)
        for c in conns:
            c.close(CLOSE_BY_ADMIN, reason)
        return len(conns)

    # -- frame batching ------------------------------------------------------------------------

    def mark_dirty(self, c: Connection) -> None:
        c.outbox.dirty = True
        if not self._dirty:
            self._dirty_event.set()
        self._dirty.append(c)

    async def run_flusher(self) -> None:
        """A batching connection's pending topic messages go to its outbox as one item at most
        once per BATCH_DELAY_SECONDS: the first after a quiet spell at once (at the end of the
        scheduling round that published it, with whatever else that round published), the
        next ones when BATCH_DELAY_SECONDS have passed since — and never while its writer is
        still sending (it hands them back when done) or has not yet taken its queue (so when
        the CPU is the limit, frames grow instead of multiplying). One task and one timer for
        every batching connection; none while there is nothing pending."""
        delay = BATCH_DELAY_SECONDS
        while True:
            await self._dirty_event.wait()
            await trio.lowlevel.checkpoint()  # let the round that published finish
            now = trio.current_time()
            dirty, self._dirty = self._dirty, []
            self._dirty_event = trio.Event()
            wait_until = math.inf
            flushed = 0
            for c in dirty:
                box = c.outbox
                if c.close_code is not None:
                    box.dirty = False
                elif box.writing or now < box.flushed_at + delay or box.untaken:
                    # Its turn comes later: too soon, or its writer has not even taken what
                    # it was given last time (the CPU is busy: let the frame grow meanwhile).
                    self._dirty.append(c)
                    wait_until = min(wait_until, max(now, box.flushed_at) + delay)
                else:
                    box.dirty = False
                    box.flushed_at = now
                    flushed += 1
                    if not box.flush():
                        c.close(CLOSE_SLOW_CONSUMER, SLOW_CONSUMER_REASON)
            # Many connections flushed together take long to write: space their frames out
            # as much, so that the time left between them publishes more to each frame.
            delay = BATCH_DELAY_SECONDS * max(1.0, flushed / BATCH_CONNECTIONS_PER_DELAY)
            if self._dirty:
                self._dirty_event.set()
                await trio.sleep_until(wait_until)

    # -- state topics --------------------------------------------------------------------------

    def register_state_topic(self, topic: str, type_: str, build_json: Callable[[], str], *,
                             version: Callable[[], object] | None = None) -> None:
        """Make ``topic`` (a built-in topic) a state topic. With ``version``, the text is
        reused while the version is unchanged."""
        self.state[topic] = StateTopic(type_, build_json, version)

    def state_json(self, state: StateTopic) -> str:
        key = state.version() if state.version is not None else None
        if state.cached is not None and key is not None and state.cached[0] == key:
            return state.cached[1]
        data_json = state.build_json()
        state.builds += 1
        state.cached = (key, data_json) if key is not None else None
        return data_json

    def send_state(self, c: Connection, topic: str) -> None:
        """The current state of a state topic, to a new subscriber."""
        state = self.state[topic]
        text = envelope(state.type, topic, state.seq, iso(self.wall_clock()),
                        self.state_json(state))
        if c.outbox.offer_latest(f"{topic} {state.type}", text):
            self.counters.conflated += 1

    def publish_state(self, topic: str) -> int:
        """Build the state (once) and publish it; returns connections reached. Does nothing
        without subscribers."""
        if not self.subscribers(topic):
            return 0
        state = self.state[topic]
        state.pushes += 1
        return self.publish_state_json(topic, state.type, self.state_json(state))

    def publish_state_json(self, topic: str, type_: str, data_json: str) -> int:
        """A message on a state topic that is not its full state (a delta)."""
        state = self.state[topic]
        state.seq += 1
        self.published += 1
        text = envelope(type_, topic, state.seq, iso(self.wall_clock()), data_json)
        return self.deliver(topic, type_, text)
