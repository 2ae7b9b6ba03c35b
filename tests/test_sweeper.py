"""The sweeper on Trio's fake clock, with exact times.

The sweeper marks a client offline at its own deadline (its last heartbeat plus its timeout,
plus the 1 ms slack that makes it *older* than the timeout), with
``presence.check_interval_seconds`` only an upper bound between sweeps.

The clock here is a :class:`trio.testing.MockClock` that the test moves itself, to the next
moment some task sleeps until (or by half a second at most), after letting everything settle:
every task blocked and every staged write committed. An autojumping clock cannot give exact times in these tests: it also jumps while a
commit runs in a worker thread (every task is then blocked), so a sweep that awaits its commit
would let the clock run past the next sweep. With the clock moved by hand, virtual time stands
still during HTTP requests and commits, and heartbeats, sweeps and checks happen exactly at the
virtual times the test names. (Commits are immediate: ``storage.commit_interval_ms = 0``.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from rpad.backend.local.presence import LocalPresence
from rpad.backend.local.store import Store
from rpad.config import Config
from rpad.core.model import Event
from rpad.core.registry import Registry
from rpad.core.validation import Heartbeat, Registration
from rpad.service.periodic import DEADLINE_SLACK_SECONDS, Sweeper, run_sweeper
from rpad.service.presence import Presence

from .conftest import FAKE_WALL_ORIGIN, Running, fake_wall_clock, start_daemon

TIMEOUT = 10.0
CHECK = 3.0
STEP = 0.5


def wall(t: float) -> float:
    return FAKE_WALL_ORIGIN + t


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class Driver:
    """Moves a MockClock by hand: settle, step, settle, ..."""

    def __init__(self, clock: trio.testing.MockClock, store: Callable[[], Store | None]) -> None:
        self.clock = clock
        self.store = store

    async def settle(self) -> None:
        for _ in range(3):
            await trio.testing.wait_all_tasks_blocked()
            store = self.store()
            if store is not None:
                await store.durable()

    async def advance_to(self, t: float) -> None:
        await self.settle()
        while trio.current_time() < t:
            # To the next timer exactly (a sweep at a deadline happens at its own time).
            to_next = trio.lowlevel.current_statistics().seconds_to_next_deadline
            self.clock.jump(max(0.0, min(STEP, to_next, t - trio.current_time())))
            await self.settle()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock()  # rate 0, no autojump: only the test moves it


# -- the sweeper with Presence and a real store ------------------------------------------------


class Silent:
    """Feeds and alerts that announce nothing (only the state and the database matter here)."""

    def publish_events(self, events: Sequence[Event]) -> None:
        pass

    def client_transition(self, event: Event) -> None:
        pass


def store_of(presence: Presence) -> Store:
    backend = presence.backend
    assert isinstance(backend, LocalPresence)
    return backend.store


@pytest.fixture
async def presence(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Presence]:
    store = Store(tmp_path / "rpad.db", commit_interval_ms=0)
    await trio.to_thread.run_sync(store.open)
    await nursery.start(store.run_committer)
    registry = Registry(default_timeout_seconds=TIMEOUT, min_interval_seconds=0,
                        auto_register=True)
    yield Presence(LocalPresence(registry, store), Silent(), Silent(),
                   wall_clock=fake_wall_clock())
    nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(store.close)


SLACK = DEADLINE_SLACK_SECONDS
# Deadlines are wall-clock epoch seconds (1.7e9) turned into Trio times: exact to a few
# hundred nanoseconds of float rounding, so times below are compared to the microsecond.
US = 1e-6


def at(t: float) -> Any:
    """A wall-clock time equal to ``wall(t)`` to the microsecond."""
    return pytest.approx(wall(t), abs=US)


async def test_offline_exactly_at_each_clients_deadline(
        clock: trio.testing.MockClock, presence: Presence, nursery: trio.Nursery) -> None:
    drive = Driver(clock, lambda: store_of(presence))
    registry = presence.view
    await presence.register(Registration("long", heartbeat_timeout_seconds=20.0))
    s = trio.current_time()
    # The upper bound is far away: every sweep below happens at a deadline.
    sweeper = Sweeper(presence, lambda: 1000.0, wall_clock=presence.wall_clock)
    presence.on_deadline_change = sweeper.poke
    await nursery.start(sweeper.run)

    async def beat_at(t: float, cid: str, fields: dict[str, Any]) -> None:
        await trio.sleep_until(s + t)
        await presence.heartbeat(Heartbeat(client_id=cid, **fields))

    # (client, its beats, when it must be marked offline, why)
    plan: list[tuple[str, list[tuple[float, dict[str, Any]]], float, str]] = [
        # last beat at 1.5, 10 s timeout: offline at 11.5 (+ the slack)
        ("a", [(1.5, {})], 11.5 + SLACK, "timeout"),
        # last beat at 2: 12
        ("b", [(2.0, {})], 12.0 + SLACK, "timeout"),
        # registered with a 20 s timeout: 21
        ("long", [(1.0, {})], 21.0 + SLACK, "timeout"),
        # declares a 9 s interval, so its timeout is 18 s: 19
        ("slow", [(1.0, {"interval_seconds": 9.0})], 19.0 + SLACK, "timeout"),
        # beats every 5 s until 31: 41
        ("steady", [(t, {}) for t in (1.0, 6.0, 11.0, 16.0, 21.0, 26.0, 31.0)], 41.0 + SLACK,
         "timeout"),
        # a clean shutdown is offline at once, not at a sweep
        ("quits", [(1.0, {}), (4.0, {"status": "offline"})], 4.0, "agent_shutdown"),
    ]
    for cid, times, _, _ in plan:
        for t, fields in times:
            nursery.start_soon(beat_at, t, cid, fields)

    # Just before each expected moment the client is online; just after, offline since then.
    for cid, _, offline_at, _ in sorted(plan, key=lambda p: p[2]):
        await drive.advance_to(s + offline_at - 2 * SLACK)
        assert registry.get(cid).status == "online", cid  # type: ignore[union-attr]
        await drive.advance_to(s + offline_at + US)
        c = registry.get(cid)
        assert c is not None
        assert (c.status, c.offline_since) == ("offline", at(s + offline_at)), cid

    # What the sweeper decided is in the database, with the reason.
    db = sqlite3.connect(store_of(presence).path)
    try:
        rows = dict(db.execute("SELECT client_id, offline_since FROM clients "
                               "WHERE status = 'offline'").fetchall())
        history = db.execute("SELECT client_id, at, status, reason FROM client_events "
                             "WHERE status = 'offline' ORDER BY at").fetchall()
    finally:
        db.close()
    assert rows == {cid: at(s + t) for cid, _, t, _ in plan}
    assert history == [(cid, at(s + t), "offline", reason)
                       for cid, _, t, reason in sorted(plan, key=lambda p: p[2])]
    # One sweep per deadline (a, b, slow, long, steady), none on the upper bound.
    assert (sweeper.sweeps, sweeper.deadline_sweeps) == (5, 5)


async def test_a_registration_with_a_shorter_timeout_brings_the_alarm_forward(
        clock: trio.testing.MockClock, presence: Presence, nursery: trio.Nursery) -> None:
    drive = Driver(clock, lambda: store_of(presence))
    s = trio.current_time()
    sweeper = Sweeper(presence, lambda: 1000.0, wall_clock=presence.wall_clock)
    presence.on_deadline_change = sweeper.poke
    await nursery.start(sweeper.run)
    await presence.heartbeat(Heartbeat(client_id="a"))  # deadline s+10: the alarm
    await drive.advance_to(s + 2)
    await presence.register(Registration("a", heartbeat_timeout_seconds=3.0))  # now s+3
    await drive.advance_to(s + 3 + SLACK + US)
    assert presence.view.get("a").offline_since == at(s + 3 + SLACK)  # type: ignore[union-attr]
    # A first heartbeat (a client coming online) sets an alarm too.
    await presence.heartbeat(Heartbeat(client_id="b"))
    await drive.advance_to(s + 13 + 2 * SLACK + US)
    assert presence.view.get("b").offline_since == at(s + 13 + 2 * SLACK)  # type: ignore[union-attr]


async def test_the_check_interval_is_an_upper_bound_and_applies_from_the_next_round(
        clock: trio.testing.MockClock, presence: Presence, nursery: trio.Nursery) -> None:
    drive = Driver(clock, lambda: store_of(presence))
    interval = [CHECK]
    s = trio.current_time()
    sweeper = Sweeper(presence, lambda: interval[0], wall_clock=presence.wall_clock)
    await nursery.start(sweeper.run)
    await drive.advance_to(s + 1)
    interval[0] = 7.0  # the round already scheduled (s+3) stays; then s+10, s+17
    await drive.advance_to(s + 16.5)
    assert (sweeper.sweeps, sweeper.deadline_sweeps) == (2, 0)
    # Nobody told the sweeper of this client (no poke): the upper bound finds it.
    await presence.backend.heartbeats([Heartbeat(client_id="a")], wall(s + 16.5) - 12, None)
    await drive.advance_to(s + 17)
    assert presence.view.get("a").offline_since == wall(s + 17)  # type: ignore[union-attr]
    assert (sweeper.sweeps, sweeper.deadline_sweeps) == (3, 0)


async def test_run_sweeper_still_runs_a_sweeper(
        clock: trio.testing.MockClock, presence: Presence, nursery: trio.Nursery) -> None:
    drive = Driver(clock, lambda: store_of(presence))
    s = trio.current_time()
    await nursery.start(run_sweeper, presence, lambda: CHECK)
    await presence.heartbeat(Heartbeat(client_id="a"))
    await drive.advance_to(s + TIMEOUT + SLACK + US)
    assert presence.view.get("a").offline_since == at(s + TIMEOUT + SLACK)  # type: ignore[union-attr]


# -- the whole daemon on the fake clock --------------------------------------------------------


def daemon_config(make_config: Callable[..., Config], **presence: Any) -> Config:
    return make_config(presence={"heartbeat_timeout_seconds": TIMEOUT,
                                 "check_interval_seconds": CHECK, "min_interval_seconds": 0,
                                 **presence},
                       storage={"commit_interval_ms": 0},
                       logging={"level": "warning"})


class Daemons:
    """Starts and stops daemons in the test, on the hand-driven clock."""

    def __init__(self, clock: trio.testing.MockClock) -> None:
        self.running: Running | None = None
        self.drive = Driver(clock, self._store)

    def _store(self) -> Store | None:
        return self.running.daemon.store if self.running is not None else None

    async def start(self, nursery: trio.Nursery, cfg: Config) -> Running:
        self.running = await start_daemon(nursery, cfg, wall_clock=fake_wall_clock())
        return self.running

    async def stop(self) -> None:
        assert self.running is not None
        await self.running.http.aclose()
        self.running.daemon.stop()
        self.running = None


async def test_daemon_sweeps_a_silent_client_offline_at_its_deadline(
        clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    daemons = Daemons(clock)
    drive = daemons.drive
    async with trio.open_nursery() as nursery:
        s = trio.current_time()
        rpad = await daemons.start(nursery, daemon_config(make_config))
        assert rpad.daemon.presence.view.grace_until == 0.0  # type: ignore[union-attr]
        assert trio.current_time() == s  # the sweeper's cadence: s+3, s+6, ...
        r = await rpad.request("POST", "/api/v1/clients",
                               json={"clientId": "b", "heartbeatTimeoutSeconds": 25})
        assert r.status_code == 201
        await drive.advance_to(s + 1)
        beat_a = (await rpad.heartbeat("a")).json()
        beat_b = (await rpad.heartbeat("b")).json()
        assert beat_a["serverTime"] == beat_b["serverTime"] == "2026-01-01T00:00:01.000Z"
        assert (beat_a["timeoutSeconds"], beat_b["timeoutSeconds"]) == (TIMEOUT, 25.0)

        # a: its deadline is 11, b's 26 (the check interval, 3 s, plays no part).
        for cid, offline_at in (("a", 11.0 + SLACK), ("b", 26.0 + SLACK)):
            await drive.advance_to(s + offline_at - 2 * SLACK)
            view = (await rpad.request("GET", f"/api/v1/clients/{cid}")).json()
            assert view["status"] == "online", cid
            await drive.advance_to(s + offline_at + US)
            view = (await rpad.request("GET", f"/api/v1/clients/{cid}")).json()
            # ISO times carry milliseconds.
            assert (view["status"], parse_time(view["offlineSince"])) == (
                "offline", pytest.approx(wall(s + offline_at), abs=0.001)), cid
            events = (await rpad.request("GET", f"/api/v1/clients/{cid}/events")).json()
            assert events["events"][0] == {"at": view["offlineSince"], "status": "offline",
                                           "reason": "timeout"}
        await daemons.stop()


async def test_startup_grace_prevents_a_false_offline_storm(
        clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    cfg = daemon_config(make_config)
    clients = [f"c{i}" for i in range(20)]
    daemons = Daemons(clock)
    drive = daemons.drive
    async with trio.open_nursery() as nursery:
        rpad = await daemons.start(nursery, cfg)
        for cid in clients:
            assert (await rpad.heartbeat(cid)).status_code == 200
        await daemons.stop()
    # rpad is down for far longer than the timeout: missed heartbeats are rpad's fault.
    await drive.advance_to(trio.current_time() + 100)
    async with trio.open_nursery() as nursery:
        r = trio.current_time()
        rpad = await daemons.start(nursery, cfg)
        registry = rpad.daemon.presence.view  # type: ignore[union-attr]
        assert registry.grace_until == wall(r + TIMEOUT)
        assert registry.online_count == len(clients)

        # c0 comes back during the grace; the others never do.
        await drive.advance_to(r + 5)
        assert (await rpad.heartbeat("c0")).json()["serverTime"] == "2026-01-01T00:01:45.000Z"

        # Every deadline has passed, but the grace holds them all until r+10.
        await drive.advance_to(r + 10)
        body = (await rpad.request("GET", "/api/v1/clients?status=offline")).json()
        assert body["total"] == 0
        # At the end of the grace, those that did not come back are marked offline.
        await drive.advance_to(r + 10 + SLACK + US)
        body = (await rpad.request("GET", "/api/v1/clients")).json()
        views = {v["clientId"]: v for v in body["clients"]}
        offline = {cid: parse_time(v["offlineSince"]) for cid, v in views.items()
                   if v["status"] == "offline"}
        assert offline == {cid: pytest.approx(wall(r + 10 + SLACK), abs=0.001)
                           for cid in clients[1:]}
        assert views["c0"]["status"] == "online"
        # c0 times out on its own schedule: at r+15.
        await drive.advance_to(r + 15)
        assert (await rpad.request("GET", "/api/v1/clients/c0")).json()["status"] == "online"
        await drive.advance_to(r + 15 + SLACK + US)
        view = (await rpad.request("GET", "/api/v1/clients/c0")).json()
        assert (view["status"], parse_time(view["offlineSince"])) == (
            "offline", pytest.approx(wall(r + 15 + SLACK), abs=0.001))
        await daemons.stop()


async def test_configured_startup_grace(
        clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    cfg = daemon_config(make_config, startup_grace_seconds=20)
    daemons = Daemons(clock)
    drive = daemons.drive
    async with trio.open_nursery() as nursery:
        rpad = await daemons.start(nursery, cfg)
        await rpad.heartbeat("a")
        await daemons.stop()
    await drive.advance_to(trio.current_time() + 100)
    async with trio.open_nursery() as nursery:
        r = trio.current_time()
        rpad = await daemons.start(nursery, cfg)
        assert rpad.daemon.presence.view.grace_until == wall(r + 20)  # type: ignore[union-attr]
        await drive.advance_to(r + 20)
        assert (await rpad.request("GET", "/api/v1/clients/a")).json()["status"] == "online"
        await drive.advance_to(r + 20 + SLACK + US)
        view = (await rpad.request("GET", "/api/v1/clients/a")).json()
        assert (view["status"], parse_time(view["offlineSince"])) == (
            "offline", pytest.approx(wall(r + 20 + SLACK), abs=0.001))
        await daemons.stop()


async def test_no_grace_without_clients_to_protect(
        clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    daemons = Daemons(clock)
    async with trio.open_nursery() as nursery:
        rpad = await daemons.start(nursery, daemon_config(make_config))
        assert rpad.daemon.presence.view.grace_until == 0.0  # type: ignore[union-attr]
        await daemons.stop()


async def test_a_slow_commit_does_not_delay_the_next_deadline(
        clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery) -> None:
    """The disk stalls while the first sweep commits: the second client is still marked
    offline at its own deadline (announced once the disk is back, both in order of marking)."""
    import threading

    store = Store(tmp_path / "rpad.db", commit_interval_ms=0)
    await trio.to_thread.run_sync(store.open)
    nursery.start_soon(store.run_committer)
    announced: list[tuple[str, float]] = []

    class Recorder(Silent):
        def publish_events(self, events: Sequence[Event]) -> None:
            announced.extend((e.client_id, e.at) for e in events if e.type == "CLIENT_DISCONNECTED")

    registry = Registry(default_timeout_seconds=TIMEOUT, min_interval_seconds=0,
                        auto_register=True)
    presence = Presence(LocalPresence(registry, store), Recorder(), Silent(),
                        wall_clock=fake_wall_clock())
    s = trio.current_time()
    await presence.heartbeat(Heartbeat(client_id="a"))  # deadline s+10
    clock.jump(1.0)
    await presence.heartbeat(Heartbeat(client_id="b"))  # deadline s+11
    sweeper = Sweeper(presence, lambda: 1000.0, wall_clock=presence.wall_clock)
    await nursery.start(sweeper.run)
    gate = threading.Event()
    apply = store._apply

    def stalled(batch: Any) -> None:
        gate.wait(30)  # the disk, stuck in fsync
        apply(batch)

    store._apply = stalled  # type: ignore[method-assign]
    drive = Driver(clock, lambda: None)
    await drive.advance_to(s + 11 + SLACK + US)
    # Both marked at their own deadlines, though a's commit has not finished.
    assert registry.get("a").offline_since == at(s + 10 + SLACK)  # type: ignore[union-attr]
    assert registry.get("b").offline_since == at(s + 11 + SLACK)  # type: ignore[union-attr]
    assert announced == []  # announced only once durable
    gate.set()
    for _ in range(3000):
        await trio.to_thread.run_sync(lambda: None)
        await trio.testing.wait_all_tasks_blocked()
        if len(announced) == 2:
            break
    assert [(cid, t) for cid, t in announced] == [("a", at(s + 10 + SLACK)),
                                                 ("b", at(s + 11 + SLACK))]
    assert (sweeper.sweeps, sweeper.deadline_sweeps) == (2, 2)
    nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(store.close)
