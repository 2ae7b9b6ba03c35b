"""Property tests (Hypothesis) of the presence state machine.

Random sequences of heartbeats, registrations, sweeps, removals, restarts (every client written
out as a database row and read back, as ``rpad serve`` does after a crash) and wall-clock jumps
(forwards and backwards, as NTP steps and suspended VMs do) are run against the real
:class:`~rpad.core.registry.Registry`, next to a small model that knows only the rules of SPEC §4.
After every step:

* a client is ``online`` if and only if its last heartbeat is within its timeout (the
  registered timeout or the default, at least twice its declared interval) and it did not say
  ``offline`` — checked after every sweep outside the startup grace;
* inside the grace nobody is marked offline;
* every change of a client's status is announced by exactly one event of the right type
  (``CLIENT_CONNECTED``, ``CLIENT_DISCONNECTED``, ``CLIENT_REMOVED``), and no event announces a
  change that did not happen; every accepted heartbeat gives exactly one ``HEARTBEAT_RECEIVED``;
* the online count is the number of online clients;
* the events, handed to the real feeds and local broker as Presence does, make exactly one
  message each on their
  topic (plus a notification for each offline transition and comeback), and every topic's
  ``seq`` runs 1, 2, 3, … without a gap or a repeat, starting afresh after each restart, with
  a bounded history.

The runs are derandomized (a fixed seed), so CI and a developer see the same examples.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from rpad.backend.local.broker import LocalBroker
from rpad.backend.local.store import client_from_row, client_row
from rpad.core.registry import (
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    CLIENT_REMOVED,
    HEARTBEAT_RECEIVED,
    OFFLINE,
    ONLINE,
    Event,
    RateLimited,
    Registry,
    UnknownClient,
)
from rpad.core.times import iso
from rpad.core.topics import TOPIC_CLIENT_STATUS, TOPIC_HEARTBEAT, TOPIC_NOTIFICATIONS
from rpad.core.validation import Heartbeat, Registration
from rpad.hub.codes import HubCounters
from rpad.hub.fanout import Fanout
from rpad.service.feeds import Feeds

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DEFAULT_TIMEOUT_SECONDS = 60.0
MIN_INTERVAL_SECONDS = 1.0
CLIENT_IDS = ("a", "b", "c", "d", "e")
HISTORY_SIZE = 16
TOPICS = (TOPIC_CLIENT_STATUS, TOPIC_HEARTBEAT, TOPIC_NOTIFICATIONS)

PROPERTY_SETTINGS = settings(
    max_examples=200,
    stateful_step_count=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

client_ids = st.sampled_from(CLIENT_IDS)
# Small steps (between heartbeats), steps around the timeouts, and big ones.
small_steps = st.sampled_from([0.0, 0.2, 0.999, 1.0, 1.5, 5.0, 19.0, 29.999, 30.0, 30.001,
                               59.0, 60.0, 60.001, 61.0, 90.0, 119.5, 120.0, 300.0])
clock_jumps = st.sampled_from([-86_400.0, -3600.0, -120.0, -1.0, 3600.0, 86_400.0])


@attrs.define
class Known:
    """What the model knows of a client: only what the rules of SPEC §4 need."""

    last_heartbeat: float | None = None
    said_offline: bool = False
    registered_timeout: float | None = None
    interval: float | None = None
    # What the rules say the status must be after the last sweep (or heartbeat).
    online: bool = False

    def timeout(self) -> float:
        t = self.registered_timeout if self.registered_timeout is not None else DEFAULT_TIMEOUT_SECONDS
        if self.interval is not None:
            t = max(t, 2 * self.interval)
        return t


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.registry = self._new_registry(grace_until=0.0)
        self.known: dict[str, Known] = {}
        self.restarts = 0
        self.stepped_back = False
        self.broker, self.feeds = self._new_broker()
        self.expected_seq: dict[str, int] = {}

    @staticmethod
    def _new_registry(grace_until: float) -> Registry:
        return Registry(default_timeout_seconds=DEFAULT_TIMEOUT_SECONDS,
                        min_interval_seconds=MIN_INTERVAL_SECONDS, auto_register=True,
                        grace_until=grace_until)

    def _new_broker(self) -> tuple[LocalBroker, Feeds]:
        """The real local broker (delivering to a hub's fan-out with nobody subscribed) and the
        feeds: new ones per start of rpad, as seqs start afresh with each epoch."""
        fanout = Fanout(HubCounters(), wall_clock=lambda: self.now)
        broker = LocalBroker(fanout, epoch=f"epoch-{self.restarts}",
                             history_size=HISTORY_SIZE, wall_clock=lambda: self.now)
        return broker, Feeds(broker, wall_clock=lambda: self.now)

    def _publish(self, events: list[Event]) -> None:
        """What Presence does with the events of a change: hand them to the feeds. Each event
        is one message on its topic, at once; notifications are the alert policy's
        (tests/test_alert_policy.py), never the feeds' own."""
        before = {t: self.broker.topic_seq(t) for t in TOPICS}
        self.feeds.publish_events(events)
        for e in events:
            topic = TOPIC_HEARTBEAT if e.type == HEARTBEAT_RECEIVED else TOPIC_CLIENT_STATUS
            self.expected_seq[topic] = self.expected_seq.get(topic, 0) + 1
        for t in TOPICS:
            assert self.broker.topic_seq(t) == self.expected_seq.get(t, 0), (t, events)
            new = self.broker.topic_seq(t) - before[t]
            history = self.broker.history(t)
            for (seq, text) in history[len(history) - new:]:
                msg = json.loads(text)
                assert (msg["topic"], msg["seq"]) == (t, seq)
        for e in events:  # each event's message carries the event's own time
            history = self.broker.history(TOPIC_HEARTBEAT if e.type == HEARTBEAT_RECEIVED
                                          else TOPIC_CLIENT_STATUS)
            assert any(json.loads(text)["ts"] == iso(e.at) for _, text in history)

    @initialize(auto=st.booleans())
    def choose_registration_policy(self, auto: bool) -> None:
        self.registry.auto_register = auto

    # -- helpers -------------------------------------------------------------------------------

    def _statuses(self) -> dict[str, str]:
        return {c.client_id: c.status for c in self.registry}

    def _check_transitions(self, before: dict[str, str], events: list[Event],
                           removed: str | None = None) -> None:
        """Each status change has exactly one event of the right type, and vice versa."""
        after = self._statuses()
        expected: list[tuple[str, str]] = []
        for cid in sorted(before.keys() | after.keys()):
            if cid == removed:
                expected.append((CLIENT_REMOVED, cid))
                continue
            old, new = before.get(cid), after.get(cid)
            if old == new or (old is None and new == "unknown"):  # registered, never heard
                continue
            assert new is not None, f"{cid} vanished without being removed"
            if new == ONLINE:
                expected.append((CLIENT_CONNECTED, cid))
            elif new == OFFLINE:
                expected.append((CLIENT_DISCONNECTED, cid))
            else:
                raise AssertionError(f"{cid} changed from {old} to {new}")
        announced = sorted((e.type, e.client_id) for e in events if e.is_transition)
        assert announced == sorted(expected), (announced, expected)
        for e in events:
            if e.type in (CLIENT_CONNECTED, CLIENT_DISCONNECTED):
                assert e.at == self.now
                assert e.data["status"] == after[e.client_id]
                assert e.data["clientId"] == e.client_id

    # -- rules ---------------------------------------------------------------------------------

    @rule(cid=client_ids, status=st.sampled_from(["online", "busy", "offline"]),
          interval=st.sampled_from([None, None, 10.0, 45.0]), step=small_steps)
    def heartbeat(self, cid: str, status: str, interval: float | None, step: float) -> None:
        self.now += step
        before = self._statuses()
        k = self.known.get(cid)
        try:
            out = self.registry.heartbeat(
                Heartbeat(client_id=cid, status=status, interval_seconds=interval), self.now)
        except RateLimited as exc:
            # Only a too early beat of a known client, never a clean shutdown, is refused;
            # and never for longer than the minimum interval (whatever the clock did).
            assert k is not None and k.last_heartbeat is not None and status != OFFLINE
            assert self.now < k.last_heartbeat + MIN_INTERVAL_SECONDS
            assert 0 < exc.retry_after_seconds <= MIN_INTERVAL_SECONDS
            assert self._statuses() == before
            return
        except UnknownClient:
            assert not self.registry.auto_register and cid not in self.known
            return
        if k is not None and k.last_heartbeat is not None and status != OFFLINE:
            assert self.now >= k.last_heartbeat + MIN_INTERVAL_SECONDS or self.now < k.last_heartbeat
        k = self.known.setdefault(cid, Known())
        k.last_heartbeat = self.now
        k.said_offline = status == OFFLINE
        k.online = not k.said_offline
        if interval is not None:
            k.interval = interval
        self._check_transitions(before, out.events)
        self._publish(out.events)
        assert [e.type for e in out.events].count(HEARTBEAT_RECEIVED) == 1
        # A heartbeat decides the status at once: online, or offline for a clean shutdown.
        assert out.client.status == (OFFLINE if status == OFFLINE else ONLINE)
        assert out.timeout_seconds == k.timeout()

    @rule(cid=client_ids, timeout=st.sampled_from([None, 5.0, 30.0, 120.0]))
    def register(self, cid: str, timeout: float | None) -> None:
        before = self._statuses()
        _client, events, created = self.registry.register(
            Registration(client_id=cid, heartbeat_timeout_seconds=timeout), self.now)
        assert created == (cid not in self.known)
        k = self.known.setdefault(cid, Known())
        if timeout is not None:
            k.registered_timeout = timeout
        self._check_transitions(before, events)
        self._publish(events)

    @rule(cid=client_ids)
    def remove(self, cid: str) -> None:
        before = self._statuses()
        try:
            events = self.registry.remove(cid, self.now)
        except UnknownClient:
            assert cid not in self.known
            return
        assert cid in self.known
        del self.known[cid]
        assert self.registry.get(cid) is None
        self._check_transitions(before, events, removed=cid)
        self._publish(events)

    @rule(step=small_steps)
    def time_passes(self, step: float) -> None:
        self.now += step

    @rule(jump=clock_jumps)
    def wall_clock_jumps(self, jump: float) -> None:
        self.now += jump
        self.stepped_back = self.stepped_back or jump < 0

    @rule()
    def sweep(self) -> None:
        before = self._statuses()
        events = self.registry.sweep(self.now)
        self._check_transitions(before, events)
        self._publish(events)
        if self.now < self.registry.grace_until:
            assert events == [], "nobody is marked offline inside the startup grace"
            return
        for cid, k in self.known.items():
            client = self.registry.get(cid)
            assert client is not None
            last = k.last_heartbeat
            if not self.stepped_back:
                # The plain rule, for a clock that only moves forwards.
                in_time = (last is not None and not k.said_offline
                           and self.now - last <= k.timeout())
                assert (client.status == ONLINE) == in_time, (cid, client.status, k, self.now)
            if k.online:
                assert last is not None
                if last > self.now:
                    # A heartbeat "from the future" (the wall clock was stepped back since) is
                    # judged as if it had arrived at this sweep: a silent client goes offline
                    # one timeout later, not when the clock has caught up (maybe days later).
                    k.last_heartbeat = last = self.now
                k.online = self.now - last <= k.timeout()
            # (A client that went offline stays offline until it beats, whatever the clock does.)
            assert (client.status == ONLINE) == k.online, (cid, client.status, k, self.now)

    @rule(grace=st.sampled_from([0.0, 30.0, 60.0]), downtime=st.sampled_from([0.0, 5.0, 600.0]))
    def restart(self, grace: float, downtime: float) -> None:
        """rpad is killed and started again: every client goes through a database row."""
        statuses = self._statuses()
        rows = [client_row(c) for c in self.registry]
        self.now += downtime
        registry = self._new_registry(grace_until=self.now + grace if rows else 0.0)
        registry.auto_register = self.registry.auto_register
        registry.load(client_from_row(r) for r in rows)
        self.registry = registry
        self.restarts += 1
        self.broker, self.feeds = self._new_broker()
        self.expected_seq = {}
        assert self._statuses() == statuses, "a restart changes nobody's status by itself"

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def every_topic_history_has_consecutive_seqs(self) -> None:
        for t in TOPICS:
            seqs = [seq for seq, _ in self.broker.history(t)]
            seq = self.broker.topic_seq(t)
            assert seqs == list(range(seq - len(seqs) + 1, seq + 1)), (t, seqs)
            assert len(seqs) <= HISTORY_SIZE

    @invariant()
    def online_count_matches(self) -> None:
        assert self.registry.online_count == sum(1 for c in self.registry if c.status == ONLINE)

    @invariant()
    def the_registry_holds_exactly_the_known_clients(self) -> None:
        assert {c.client_id for c in self.registry} == set(self.known)

    @invariant()
    def every_view_is_json_ready(self) -> None:
        views: list[dict[str, Any]] = self.registry.views()
        for v in views:
            assert v["status"] in (ONLINE, OFFLINE, "unknown")


RegistryMachine.TestCase.settings = PROPERTY_SETTINGS
TestRegistryProperties = RegistryMachine.TestCase
