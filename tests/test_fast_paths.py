"""The fast paths behave exactly like the plain ones.

Each optimisation that bench/ measured into rpad keeps the behaviour of the code it speeds up,
and these tests hold each one against its plain version on real data (the heartbeat's ASGI fast
path has its own matrix in test_fastpath.py):

- group commit: at most one commit per interval, counted from the start of the previous commit
  (a steady load commits every max(interval, commit time), a lone write after a quiet spell at
  once), on Trio's mock clock with exact times.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

from rpad.registry import Client
from rpad.store import Store

T0 = 1_767_225_600.0
REAL_GUARD_SECONDS = 10.0


def _client(cid: str) -> Client:
    return Client(client_id=cid, registered_at=T0, status="online", last_heartbeat_at=T0)


async def _open(path: Path, **kwargs: Any) -> Store:
    store = Store(path, **kwargs)
    await trio.to_thread.run_sync(store.open)
    return store


async def _durable_within_real_seconds(store: Store, seconds: float) -> None:
    """store.durable(), failing if it has not returned after ``seconds`` of real time (the mock
    clock does not move by itself, so a Trio timeout would never fire)."""

    async def guard() -> None:
        await trio.to_thread.run_sync(time.sleep, seconds, abandon_on_cancel=True)
        raise AssertionError(f"durable() did not return within {seconds} s of real time")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guard)
        await store.durable()
        nursery.cancel_scope.cancel()


# -- group commit ------------------------------------------------------------------------------


async def test_a_write_after_a_quiet_spell_is_committed_at_once_then_one_per_interval(
        tmp_path: Path, mock_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    store = await _open(tmp_path / "rpad.db", commit_interval_ms=10)
    await nursery.start(store.run_committer)
    start = trio.current_time()

    store.put_client(_client("a"))
    await _durable_within_real_seconds(store, REAL_GUARD_SECONDS)
    assert trio.current_time() == start  # no interval waited
    assert store.commits == 1

    # The next write comes right after: it waits for the interval since the commit started.
    store.put_client(_client("b"))
    finished = trio.Event()

    async def wait_b() -> None:
        await store.durable()
        finished.set()

    nursery.start_soon(wait_b)
    await trio.testing.wait_all_tasks_blocked()
    assert not finished.is_set() and store.commits == 1
    mock_clock.jump(0.009)
    await trio.testing.wait_all_tasks_blocked()
    assert not finished.is_set() and store.commits == 1
    mock_clock.jump(0.0015)
    for _ in range(2000):  # virtual time stands still now: only the real commit is awaited
        if finished.is_set():
            break
        await trio.to_thread.run_sync(time.sleep, 0.005)
    assert finished.is_set() and store.commits == 2
    nursery.cancel_scope.cancel()
    store.close()


async def test_writes_staged_during_a_commit_wait_only_for_the_interval_since_its_start(
        tmp_path: Path, mock_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    store = await _open(tmp_path / "rpad.db", commit_interval_ms=10)
    gate = threading.Event()
    apply = store._apply

    def slow_apply(batch: Any) -> None:  # the real commit, held back to last 15 ms of Trio time
        gate.wait(REAL_GUARD_SECONDS)
        apply(batch)

    store._apply = slow_apply  # type: ignore[method-assign]
    await nursery.start(store.run_committer)
    start = trio.current_time()

    store.put_client(_client("a"))  # committed at once; the commit is now "running"
    await trio.testing.wait_all_tasks_blocked()
    store.put_client(_client("b"))  # staged while "a" is being committed
    mock_clock.jump(0.015)  # the commit of "a" took 15 ms
    gate.set()
    # "b" goes at once: the interval since the start of "a"'s commit (10 ms) has passed.
    await _durable_within_real_seconds(store, REAL_GUARD_SECONDS)
    assert trio.current_time() == start + 0.015
    assert store.commits == 2 and store.last_batch_size == 1
    nursery.cancel_scope.cancel()
    store.close()
