"""The sweeper on Trio's fake clock, with exact times.

The clock here is a :class:`trio.testing.MockClock` that the test moves itself, in steps of
half a second, after letting everything settle: every task blocked and every staged write
committed. An autojumping clock cannot give exact times in these tests: it also jumps while a
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
import trio.testing

from rpad.backend.local.presence import LocalPresence
from rpad.backend.local.store import Store
from rpad.config import Config
from rpad.core.model import Event
from rpad.core.registry import Registry
from rpad.core.validation import Heartbeat, Registration
from rpad.service.periodic import run_sweeper
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
            self.clock.jump(min(STEP, t - trio.current_time()))
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


async def test_offline_at_exactly_the_first_sweep_after_the_timeout(
        clock: trio.testing.MockClock, presence: Presence, nursery: trio.Nursery) -> None:
    drive = Driver(clock, lambda: store_of(presence))
    registry = presence.view
    await presence.register(Registration("long", heartbeat_timeout_seconds=20.0))
    s = trio.current_time()
    await nursery.start(run_sweeper, presence, lambda: CHECK)  # sweeps at s+3, s+6, ...

    async def beat_at(t: float, cid: str, fields: dict[str, Any]) -> None:
        await trio.sleep_until(s + t)
        await presence.heartbeat(Heartbeat(client_id=cid, **fields))

    # (client, its beats, when it must be marked offline, why)
    plan: list[tuple[str, list[tuple[float, dict[str, Any]]], float, str]] = [
        # last beat at 1.5: timed out after 11.5, so the sweep at 12
        ("a", [(1.5, {})], 12.0, "timeout"),
        # last beat at 2: at the sweep at 12 it is exactly 10 s old, not older; so 15
        ("b", [(2.0, {})], 15.0, "timeout"),
        # registered with a 20 s timeout: older than 20 s after 21, so 24
        ("long", [(1.0, {})], 24.0, "timeout"),
        # declares a 9 s interval, so its timeout is 18 s: after 19, so 21
        ("slow", [(1.0, {"interval_seconds": 9.0})], 21.0, "timeout"),
        # beats every 5 s until 31: after 41, so 42
        ("steady", [(t, {}) for t in (1.0, 6.0, 11.0, 16.0, 21.0, 26.0, 31.0)], 42.0, "timeout"),
        # a clean shutdown is offline at once, not at a sweep
        ("quits", [(1.0, {}), (4.0, {"status": "offline"})], 4.0, "agent_shutdown"),
    ]
    for cid, times, _, _ in plan:
        for t, fields in times:
            nursery.start_soon(beat_at, t, cid, fields)

    # Just before each expected moment the client is online; just after, offline since then.
    for cid, _, offline_at, _ in sorted(plan, key=lambda p: p[2]):
        await drive.advance_to(s + offline_at - STEP)
        assert registry.get(cid).status == "online", cid  # type: ignore[union-attr]
        await drive.advance_to(s + offline_at)
        c = registry.get(cid)
        assert c is not None
        assert (c.status, c.offline_since) == ("offline", wall(s + offline_at)), cid

    # What the sweeper decided is in the database, with the reason.
    db = sqlite3.connect(store_of(presence).path)
    try:
        rows = dict(db.execute("SELECT client_id, offline_since FROM clients "
                               "WHERE status = 'offline'").fetchall())
        history = db.execute("SELECT client_id, at, status, reason FROM client_events "
                             "WHERE status = 'offline' ORDER BY at").fetchall()
    finally:
        db.close()
    assert rows == {cid: wall(s + at) for cid, _, at, _ in plan}
    assert history == [(cid, wall(s + at), "offline", reason)
                       for cid, _, at, reason in sorted(plan, key=lambda p: p[2])]


async def test_a_new_interval_applies_from_the_next_round(
        clock: trio.testing.MockClock, presence: Presence, nursery: trio.Nursery) -> None:
    drive = Driver(clock, lambda: store_of(presence))
    interval = [CHECK]
    s = trio.current_time()
    await nursery.start(run_sweeper, presence, lambda: interval[0])
    await presence.heartbeat(Heartbeat(client_id="a"))  # at s
    await drive.advance_to(s + 1)
    interval[0] = 7.0  # the round already scheduled (s+3) stays; then s+10, s+17
    await drive.advance_to(s + 16.5)
    assert presence.view.get("a").status == "online"  # type: ignore[union-attr]
    await drive.advance_to(s + 17)
    assert presence.view.get("a").offline_since == wall(s + 17)  # type: ignore[union-attr]


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


async def test_daemon_sweeps_a_silent_client_offline_at_the_first_sweep_after(
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

        # a: older than 10 s after 11, so the sweep at 12; b: after 26, so the sweep at 27.
        for cid, offline_at in (("a", 12.0), ("b", 27.0)):
            await drive.advance_to(s + offline_at - STEP)
            view = (await rpad.request("GET", f"/api/v1/clients/{cid}")).json()
            assert view["status"] == "online", cid
            await drive.advance_to(s + offline_at)
            view = (await rpad.request("GET", f"/api/v1/clients/{cid}")).json()
            assert (view["status"], parse_time(view["offlineSince"])) == (
                "offline", wall(s + offline_at)), cid
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

        # Sweeps at r+3, r+6, r+9 are inside the grace: nobody is marked offline.
        await drive.advance_to(r + 11.5)
        body = (await rpad.request("GET", "/api/v1/clients?status=offline")).json()
        assert body["total"] == 0
        # The first sweep after the grace, at r+12, marks those that did not come back.
        await drive.advance_to(r + 12)
        body = (await rpad.request("GET", "/api/v1/clients")).json()
        views = {v["clientId"]: v for v in body["clients"]}
        offline = {cid: parse_time(v["offlineSince"]) for cid, v in views.items()
                   if v["status"] == "offline"}
        assert offline == {cid: wall(r + 12) for cid in clients[1:]}
        assert views["c0"]["status"] == "online"
        # c0 times out on its own schedule: older than 10 s after r+15, so the sweep at r+18.
        await drive.advance_to(r + 17.5)
        assert (await rpad.request("GET", "/api/v1/clients/c0")).json()["status"] == "online"
        await drive.advance_to(r + 18)
        view = (await rpad.request("GET", "/api/v1/clients/c0")).json()
        assert (view["status"], parse_time(view["offlineSince"])) == ("offline", wall(r + 18))
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
        await drive.advance_to(r + 20.5)
        assert (await rpad.request("GET", "/api/v1/clients/a")).json()["status"] == "online"
        await drive.advance_to(r + 21)
        view = (await rpad.request("GET", "/api/v1/clients/a")).json()
        assert (view["status"], parse_time(view["offlineSince"])) == ("offline", wall(r + 21))
        await daemons.stop()


async def test_no_grace_without_clients_to_protect(
        clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    daemons = Daemons(clock)
    async with trio.open_nursery() as nursery:
        rpad = await daemons.start(nursery, daemon_config(make_config))
        assert rpad.daemon.presence.view.grace_until == 0.0  # type: ignore[union-attr]
        await daemons.stop()
