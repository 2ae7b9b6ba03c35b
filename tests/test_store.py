"""The SQLite store: migrations, loading, group commit, and commit failures (real SQLite, real
failures: the write connection is switched to ``query_only``, so SQLite itself refuses)."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from rpad.backend.local import store as store_mod
from rpad.backend.local.store import SCHEMA_VERSION, StorageCorrupt, StorageUnavailable, Store
from rpad.core.registry import Client

T0 = 1_767_225_600.0


def full_client(cid: str = "a", **over: object) -> Client:
    fields: dict[str, object] = {
        "client_id": cid, "registered_at": T0, "name": "Robot", "tags": ["x", "y"],
        "metadata": {"site": 1}, "timeout_seconds": 120.0, "registered": True,
        "status": "online", "reported_status": "busy", "version": "1.0.0",
        "ip_address": "10.0.0.1", "os_type": "linux", "interval_seconds": 10.0,
        "last_heartbeat_at": T0 + 5, "online_since": T0 + 1, "offline_since": None,
        "clock_skew_seconds": -0.5, "latest_metrics": {"load1": 0.25},
    }
    fields.update(over)
    return Client(**fields)  # type: ignore[arg-type]


def as_tuple(c: Client) -> tuple[object, ...]:
    return store_mod.client_row(c)


async def open_store(path: Path, **kwargs: object) -> tuple[Store, store_mod.Loaded]:
    store = Store(path, **kwargs)  # type: ignore[arg-type]
    loaded = await trio.to_thread.run_sync(store.open)
    return store, loaded


@pytest.fixture
async def running(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Store]:
    store, _ = await open_store(tmp_path / "rpad.db")
    await nursery.start(store.run_committer)
    yield store
    nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(store.close)


def read_db(path: Path, query: str, *args: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(query, args).fetchall()
    finally:
        db.close()


# -- opening, migrations -----------------------------------------------------------------------


async def test_a_new_database_is_created_at_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "state" / "rpad.db"
    store, loaded = await open_store(path)
    try:
        assert (loaded.clients, loaded.gens, loaded.meta) == ([], {}, {})
    finally:
        store.close()
    assert read_db(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert read_db(path, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in read_db(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"clients", "client_events", "token_generations", "meta"} <= tables
    # Owner-only: the state directory and the database.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_an_empty_database_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "rpad.db"
    sqlite3.connect(path).close()  # a valid, empty database at user_version 0
    store, loaded = await open_store(path)
    store.close()
    assert loaded.clients == []
    assert read_db(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_forward_migrations_run_in_order_and_keep_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery) -> None:
    path = tmp_path / "rpad.db"
    store, _ = await open_store(path)
    store.put_client(full_client("kept"))
    store.close()  # the final commit writes it
    # A later rpad with one more migration upgrades the database in place.
    v2 = "ALTER TABLE clients ADD COLUMN note TEXT; INSERT INTO meta VALUES ('migrated', 'yes');"
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, v2])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    store, loaded = await open_store(path)
    store.close()
    assert [c.client_id for c in loaded.clients] == ["kept"]
    assert loaded.meta == {"migrated": "yes"}
    assert read_db(path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert read_db(path, "SELECT note FROM clients") == [(None,)]


async def test_a_database_from_a_newer_rpad_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "rpad.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    store = Store(path)
    with pytest.raises(StorageCorrupt) as info:
        await trio.to_thread.run_sync(store.open)
    assert str(info.value) == (
        f"{path} has schema version {SCHEMA_VERSION + 1}, newer than this rpad's "
        f"{SCHEMA_VERSION}: upgrade rpad or restore an older database")
    assert read_db(path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert path.read_bytes() == before


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rpad.db"
    path.write_bytes(b"this is not a database file, not at all" * 100)
    with pytest.raises(StorageCorrupt) as info:
        await trio.to_thread.run_sync(Store(path).open)
    assert str(info.value).startswith(f"cannot open {path}: ")


# -- round trip --------------------------------------------------------------------------------


async def test_everything_staged_is_loaded_again(tmp_path: Path, running: Store) -> None:
    a = full_client("a")
    b = full_client("b", status="offline", tags=[], metadata={}, latest_metrics=None,
                    name=None, offline_since=T0 + 9, registered=False, timeout_seconds=None)
    running.put_client(a)
    running.put_client(b)
    running.add_history("a", T0 + 1, "online", "heartbeat")
    running.set_token_generation("a", 3)
    running.set_meta("k", "v")
    await running.durable()
    store, loaded = await open_store(running.path)
    store.close()
    assert sorted(as_tuple(c) for c in loaded.clients) == sorted([as_tuple(a), as_tuple(b)])
    assert (loaded.gens, loaded.meta) == ({"a": 3}, {"k": "v"})
    assert await running.history("a") == [(T0 + 1, "online", "heartbeat")]


async def test_later_writes_to_a_client_win(running: Store) -> None:
    running.put_client(full_client("a", version="1"))
    running.put_client(full_client("a", version="2"))
    await running.durable()
    running.put_client(full_client("a", version="3"))
    running.delete_client("a")
    running.put_client(full_client("b"))
    await running.durable()
    assert read_db(running.path, "SELECT client_id, version FROM clients") == [("b", "1.0.0")]


async def test_delete_removes_the_client_and_its_history(running: Store) -> None:
    running.put_client(full_client("a"))
    running.add_history("a", T0, "online", "heartbeat")
    await running.durable()
    running.delete_client("a")
    await running.durable()
    assert read_db(running.path, "SELECT * FROM clients") == []
    assert await running.history("a") == []


async def test_history_keeps_the_newest_entries_newest_first(tmp_path: Path,
                                                             nursery: trio.Nursery) -> None:
    store, _ = await open_store(tmp_path / "rpad.db", history_per_client=3)
    await nursery.start(store.run_committer)
    # Entries older than EVENTS_KEEP_SECONDS (before the newest entry written) are kept only
    # as the newest history_per_client.
    gap = store_mod.EVENTS_KEEP_SECONDS + 100

    def old(i: int) -> float:
        return T0 - (10 - i) * gap

    for i in range(5):
        store.add_history("a", old(i), "online" if i % 2 == 0 else "offline", f"r{i}")
        await store.durable()
    store.add_history("b", old(0), "online", None)
    await store.durable()
    assert await store.history("a") == [
        (old(4), "online", "r4"), (old(3), "offline", "r3"), (old(2), "online", "r2")]
    assert await store.history("a", limit=1) == [(old(4), "online", "r4")]
    assert await store.history("b") == [(old(0), "online", None)]
    # Younger entries are kept beyond history_per_client (30-day availability reads them),
    # and the old ones go once the newest history_per_client are all younger.
    for i in range(6):
        store.add_history("a", T0 + i, "online" if i % 2 == 0 else "offline", f"n{i}")
        await store.durable()
    assert [r[2] for r in await store.history("a")] == [f"n{i}" for i in range(5, -1, -1)]
    nursery.cancel_scope.cancel()
    store.close()


async def test_young_history_is_capped_per_client(tmp_path: Path, nursery: trio.Nursery,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "EVENTS_HARD_CAP_PER_CLIENT", 4)
    store, _ = await open_store(tmp_path / "rpad.db", history_per_client=2)
    await nursery.start(store.run_committer)
    for i in range(7):
        store.add_history("a", T0 + i, "online", f"r{i}")
        await store.durable()
    assert [r[2] for r in await store.history("a")] == ["r6", "r5", "r4", "r3"]
    nursery.cancel_scope.cancel()
    store.close()


# -- group commit ------------------------------------------------------------------------------


async def test_many_concurrent_writers_share_few_commits(running: Store) -> None:
    writers = 500
    done: list[int] = []

    async def writer(i: int) -> None:
        running.put_client(full_client(f"c{i}"))
        running.add_history(f"c{i}", T0, "online", "heartbeat")
        await running.durable()
        # Durable on return: the row is on disk, visible to another connection.
        done.append(i)

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            for i in range(writers):
                n.start_soon(writer, i)
    assert len(done) == writers
    assert 1 <= running.commits <= 3, running.commits
    assert read_db(running.path, "SELECT count(*) FROM clients") == [(writers,)]
    assert read_db(running.path, "SELECT count(*) FROM client_events") == [(writers,)]


async def test_durable_with_nothing_staged_returns_at_once(running: Store) -> None:
    with trio.fail_after(1):
        await running.durable()
    assert running.commits == 0


async def test_a_full_batch_is_committed_without_waiting_for_the_interval(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    store, _ = await open_store(tmp_path / "rpad.db", commit_interval_ms=60_000, max_batch=50)
    await nursery.start(store.run_committer)
    with trio.fail_after(10):  # far less than the 60 s interval
        for i in range(50):
            store.put_client(full_client(f"c{i}"))
        await store.durable()
    assert store.commits == 1 and store.last_batch_size == 50
    nursery.cancel_scope.cancel()
    store.close()


async def test_commit_failure_is_storage_unavailable_and_is_retried(running: Store) -> None:
    writer = running._db
    assert writer is not None
    writer.execute("PRAGMA query_only = ON")  # SQLite now refuses every write on it
    running.put_client(full_client("first", version="1"))
    with trio.fail_after(10), pytest.raises(StorageUnavailable) as info:
        await running.durable()
    assert "readonly" in str(info.value)
    assert running.commit_failures == 1 and running.commits == 0
    # The disk comes back: the failed batch is retried along with new writes, which win.
    writer.execute("PRAGMA query_only = OFF")
    running.put_client(full_client("second"))
    with trio.fail_after(10):
        await running.durable()
    assert running.commits >= 1
    assert sorted(read_db(running.path, "SELECT client_id, version FROM clients")) == [
        ("first", "1"), ("second", "1.0.0")]


async def test_a_newer_write_wins_over_a_failed_older_one(running: Store) -> None:
    writer = running._db
    assert writer is not None
    writer.execute("PRAGMA query_only = ON")
    running.put_client(full_client("a", version="old"))
    running.set_token_generation("a", 1)
    with trio.fail_after(10), pytest.raises(StorageUnavailable):
        await running.durable()
    writer.execute("PRAGMA query_only = OFF")
    running.put_client(full_client("a", version="new"))
    running.set_token_generation("a", 2)
    with trio.fail_after(10):
        await running.durable()
    assert read_db(running.path, "SELECT version FROM clients") == [("new",)]
    assert read_db(running.path, "SELECT gen FROM token_generations") == [(2,)]


async def test_close_commits_what_is_staged_and_then_refuses(tmp_path: Path) -> None:
    store, _ = await open_store(tmp_path / "rpad.db")
    store.put_client(full_client("a"))  # no committer running: only close() can write it
    store.close()
    store.close()  # idempotent
    assert read_db(store.path, "SELECT client_id FROM clients") == [("a",)]
    with pytest.raises(StorageUnavailable):
        store.put_client(full_client("b"))
    with trio.fail_after(1):
        await store.durable()  # nothing can be staged any more: nothing to wait for


async def test_a_failing_migration_is_rolled_back_and_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rpad.db"
    store, _ = await open_store(path)
    store.close()
    broken = "CREATE TABLE half_done (x); INSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, broken])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(StorageCorrupt) as info:
        await trio.to_thread.run_sync(Store(path).open)
    assert str(info.value) == (
        f"cannot migrate {path} from schema version {SCHEMA_VERSION} to {SCHEMA_VERSION + 1}: "
        "no such table: no_such_table")
    assert read_db(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert read_db(path, "SELECT name FROM sqlite_master WHERE name = 'half_done'") == []
