"""The console's records in real SQLite: the audit log's filters and paging, tasks and their
results, a task a crashed rpad left running marked interrupted at the next start, retention."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from rpad.backend.base import AuditQuery, AuditRecord
from rpad.backend.local.records import LocalAuditLog, LocalTaskStore
from rpad.backend.local.store import Store
from rpad.core import tasks as t


@pytest.fixture
async def store(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Store]:
    s = Store(tmp_path / "rpad.db")
    await trio.to_thread.run_sync(s.open)
    await nursery.start(s.run_committer)
    yield s
    s.close()


def record(ref: str, at: float, **kw: object) -> AuditRecord:
    fields: dict[str, object] = {"kind": "command", "user_id": "alice", "role": "admin",
                                 "address": "10.0.0.1", "client_id": "h1", "status": "requested"}
    fields.update(kw)
    return AuditRecord(ref=ref, at=at, **fields)  # type: ignore[arg-type]


async def test_audit_filters_paging_and_ends(store: Store) -> None:
    audit = LocalAuditLog(store)
    for i in range(30):
        audit.begin(record(f"c{i}", 1000.0 + i, client_id="h1" if i % 2 else "h2",
                           user_id="alice" if i < 20 else "bob", command=f"echo {i}"))
    audit.end("c3", at=2000.0, status="success", exit_code=0, output_bytes=7, truncated=False)
    audit.begin(record("d1", 1100.0, kind="denied", status="forbidden", detail="terminal.open"))
    await audit.durable()
    items, total = await audit.query(AuditQuery(limit=5))
    assert total == 31 and [i["id"] for i in items] == [31, 30, 29, 28, 27]
    assert items[0]["kind"] == "denied" and items[0]["startedAt"] == "1970-01-01T00:18:20.000Z"
    items, total = await audit.query(AuditQuery(client_id="h1", user_id="alice", kind="command",
                                                limit=100))
    assert total == 10 and all(i["clientId"] == "h1" and i["userId"] == "alice" for i in items)
    items, _ = await audit.query(AuditQuery(since=1010.0, until=1012.0))
    assert [i["command"] for i in items] == ["echo 11", "echo 10"]
    items, total = await audit.query(AuditQuery(limit=2, offset=29))
    assert total == 31 and [i["command"] for i in items] == ["echo 1", "echo 0"]
    (c3,), _ = await audit.query(AuditQuery(status="success"))
    assert (c3["command"], c3["exitCode"], c3["outputBytes"], c3["truncated"],
            c3["endedAt"]) == ("echo 3", 0, 7, False, "1970-01-01T00:33:20.000Z")
    audit.prune(1015.0)
    _, total = await audit.query(AuditQuery())
    assert total == 31 - 15


async def test_a_task_left_running_is_interrupted_at_the_next_start(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    first = Store(tmp_path / "rpad.db")
    await trio.to_thread.run_sync(first.open)
    tasks = LocalTaskStore(first)
    running = t.TaskRecord(task_id="aa11", source="rpad", created_at=10.0, status=t.RUNNING,
                           command="sleep 300", created_by="alice", total=3)
    tasks.put_task(running)
    for i, (cid, status) in enumerate([("h1", t.R_SUCCESS), ("h2", t.R_RUNNING),
                                       ("h3", t.R_PENDING)]):
        tasks.put_result("aa11", i, t.ResultRecord(cid, status=status))
    tasks.put_task(t.TaskRecord(task_id="bb22", source="rpad", created_at=5.0,
                                status=t.COMPLETED, total=1))
    tasks.put_published(t.TaskRecord(task_id="42", source="publish", created_at=7.0,
                                     status=t.RUNNING))
    first.close()  # what a crash leaves on disk: the task still "running"

    again = Store(tmp_path / "rpad.db")
    await trio.to_thread.run_sync(again.open)
    await nursery.start(again.run_committer)
    tasks = LocalTaskStore(again)
    assert await tasks.interrupt_running(100.0) == 1
    found = await tasks.get_task("aa11")
    assert found is not None
    rec, results = found
    assert (rec.status, rec.progress, rec.ended_at, rec.failed) == (t.INTERRUPTED, 100.0, 100.0, 3)
    assert [(r.client_id, r.status) for r in results] == [
        ("h1", t.R_SUCCESS), ("h2", t.R_INTERRUPTED), ("h3", t.R_INTERRUPTED)]
    # Another system's task is its own business; an ended one stays as it was.
    listed, total = await tasks.list_tasks(created_by=None, status=None, limit=10, offset=0)
    assert total == 3 and {r.task_id: r.status for r in listed} == {
        "aa11": t.INTERRUPTED, "bb22": t.COMPLETED, "42": t.RUNNING}
    mine, total = await tasks.list_tasks(created_by="alice", status=None, limit=10, offset=0)
    assert [r.task_id for r in mine] == ["aa11"] and total == 1
    assert await tasks.interrupt_running(200.0) == 0
    tasks.prune(150.0)
    assert await tasks.get_task("aa11") is None and await tasks.get_task("bb22") is not None
    again.close()
