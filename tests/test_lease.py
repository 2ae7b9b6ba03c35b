"""The cluster's leases (rpad/backend/redis/lease.py: the sweep's and the alerts') on Trio's fake
clock, against a real redis-server: when a holder renews, how long it trusts its last renewal,
what a newer holder's token does to it, and the hand-over when a holder stops.

The clock is a MockClock that never moves on its own (rate 0): only the test's jumps move it,
so every renewal happens at an exact time. Redis's own TTL runs on the real clock; these tests
take a few real milliseconds, far below the 6 s TTL, so it never lapses under them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest
import trio
import trio.lowlevel
from trio.testing import MockClock

from rpad.backend.redis.lease import LEASE_RENEW_SECONDS, LEASE_TTL_SECONDS, Lease
from rpad.backend.redis.link import Link, RedisSettings

from .redisproc import RedisProcess, redis_server  # noqa: F401

pytestmark = pytest.mark.slow

KEY, TOKENS = "test:{lease}", "test:{lease}:tokens"
# Real seconds a wait for Redis may take before the test fails (the fake clock stands still).
REAL_TIMEOUT_SECONDS = 10.0


async def until(condition: Callable[[], bool]) -> None:
    """Wait for real I/O with the fake clock standing still (checkpoints, bounded in real
    time)."""
    deadline = time.monotonic() + REAL_TIMEOUT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "Redis did not answer in time"
        await trio.lowlevel.checkpoint()


@pytest.fixture
async def links(redis_server: RedisProcess,  # noqa: F811
                nursery: trio.Nursery) -> AsyncIterator[tuple[Link, Link]]:
    pair = (Link(RedisSettings(redis_server.url, None, "a", "test")),
            Link(RedisSettings(redis_server.url, None, "b", "test")))
    for link in pair:
        await nursery.start(link.run)
    yield pair


def lease(link: Link, node: str) -> Lease:
    return Lease(link, KEY, TOKENS, node_id=node, role="test")


async def test_the_holder_renews_every_2_s_and_others_wait(
        links: tuple[Link, Link], mock_clock: MockClock, nursery: trio.Nursery) -> None:
    a, b = lease(links[0], "a"), lease(links[1], "b")
    t0 = trio.current_time()
    scope = trio.CancelScope()

    async def run_a() -> None:
        with scope:
            await a.run()

    nursery.start_soon(run_a)
    await until(lambda: a.token is not None)
    first = a.token
    assert a.confirmed_at == t0 and a.holder == "a"
    assert not await b.hold() and b.token is None and b.holder == "a"

    for k in (1, 2, 3):
        # (Steps that binary floating point adds exactly: the expectations are exact.)
        mock_clock.jump(LEASE_RENEW_SECONDS - 0.25)
        await trio.testing.wait_all_tasks_blocked()
        assert a.confirmed_at == t0 + (k - 1) * LEASE_RENEW_SECONDS  # not yet
        mock_clock.jump(0.25)
        await until(lambda k=k: a.confirmed_at == t0 + k * LEASE_RENEW_SECONDS)
        assert a.token == first  # renewed, the same term
        ttl_ms = int(await links[1].call("PTTL", KEY))
        assert LEASE_TTL_SECONDS * 1000 - 1000 < ttl_ms <= LEASE_TTL_SECONDS * 1000
        assert not await b.hold()

    # The holder stops: it gives the lease back, and the next node takes it at once with a
    # newer token (no waiting for the TTL).
    scope.cancel()
    await until(lambda: a.token is None)
    assert await b.hold()
    assert b.token is not None and first is not None and b.token > first
    assert b.holder == "b"


async def test_a_holder_trusts_its_last_renewal_for_ttl_minus_renew_seconds(
        links: tuple[Link, Link], mock_clock: MockClock) -> None:
    """``confirmed(token)`` answers from memory while the last renewal is at most 4 s old (the
    lease cannot lapse for 2 s more), and asks Redis after that. Here another node takes the
    lease behind the holder's back (it cannot in real life within the TTL): the holder learns
    it exactly when its memory expires."""
    a, b = lease(links[0], "a"), lease(links[1], "b")
    assert await a.hold()
    token = a.token
    assert token is not None
    await links[1].call("DEL", KEY)
    assert await b.hold()  # a newer term
    assert b.token is not None and b.token > token

    mock_clock.jump(LEASE_TTL_SECONDS - LEASE_RENEW_SECONDS)
    assert await a.confirmed(token)  # from memory: 4 s since Redis said so
    assert a.token == token

    mock_clock.jump(0.001)
    assert not await a.confirmed(token)  # asked Redis: b holds it
    assert a.token is None and a.holder == "b"
    # A token of an earlier term is never confirmed.
    assert not await b.confirmed(token)
    assert await b.confirmed(b.token)


async def test_a_fenced_holder_drops_its_token_and_the_next_round_finds_the_holder(
        links: tuple[Link, Link], mock_clock: MockClock, nursery: trio.Nursery) -> None:
    a, b = lease(links[0], "a"), lease(links[1], "b")
    changes: list[int | None] = []
    a.on_change.append(changes.append)
    nursery.start_soon(a.keep)
    await until(lambda: a.token is not None)
    first = a.token
    # A write of a's was refused (a newer holder exists): it stops at once...
    await links[1].call("DEL", KEY)
    assert await b.hold()
    a.drop()
    assert a.token is None and changes == [first, None]
    # ...and its next round, 2 s later, finds who holds it rather than taking it back.
    mock_clock.jump(LEASE_RENEW_SECONDS)
    await until(lambda: a.holder == "b")
    assert a.token is None and changes == [first, None]
