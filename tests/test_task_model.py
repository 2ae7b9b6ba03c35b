"""Task counts, progress, final status and the TASK_UPDATE shape, including updates that other
systems publish."""

from __future__ import annotations

import pytest

from rpad.core import tasks as t


def test_counts_and_progress() -> None:
    c = t.counts(["pending"] * 3)
    assert (c.total, c.succeeded, c.failed, c.progress) == (3, 0, 0, 0.0)
    c = t.counts(["success", "error", "running"])
    assert (c.succeeded, c.failed, c.progress) == (1, 1, 66.6)
    c = t.counts(["success", "failed", "timeout", "cancelled", "interrupted"])
    assert (c.succeeded, c.failed, c.progress) == (1, 4, 100.0)
    assert t.counts([]).progress == 100.0
    # Never 100 before the last client is done.
    c = t.counts(["success"] * 999 + ["running"])
    assert c.progress == 99.9


def test_final_status() -> None:
    assert t.final_status(t.counts(["success"] * 2), cancelled=False) == "completed"
    assert t.final_status(t.counts(["success", "error"]), cancelled=False) == "failed"
    assert t.final_status(t.counts(["success", "cancelled"]), cancelled=True) == "cancelled"


def test_update_data() -> None:
    c = t.counts(["success", "failed", "running", "pending"])
    assert t.update_data("ab12", "running", c, "h3") == {
        "taskId": "ab12", "status": "running", "progress": 50.0, "currentDevice": "h3",
        "totalDevices": 4, "completedDevices": 1, "failedDevices": 1}
    assert t.update_data("ab12", "cancelled", c, None)["progress"] == 100.0


def test_published_update_camel_and_snake() -> None:
    data, problems = t.read_published_update("task.42", {
        "task_id": 42, "status": "running", "progress": 40, "current_device": "dev-7",
        "total_devices": 10, "completed_devices": 4})
    assert problems == []
    assert data == {"taskId": "42", "status": "running", "progress": 40.0,
                    "currentDevice": "dev-7", "totalDevices": 10, "completedDevices": 4,
                    "failedDevices": None}
    data, problems = t.read_published_update("task.42", {"status": "completed"})
    assert problems == [] and data is not None and data["taskId"] == "42"


@pytest.mark.parametrize(("topic", "data", "field"), [
    ("tasks", {"status": "running"}, "topic"),
    ("task.42", [], "data"),
    ("task.42", {"status": "done"}, "data.status"),
    ("task.42", {"status": "running", "progress": 101}, "data.progress"),
    ("task.42", {"status": "running", "progress": True}, "data.progress"),
    ("task.42", {"status": "running", "taskId": "43"}, "data.taskId"),
    ("task.42", {"status": "running", "totalDevices": -1}, "data.totalDevices"),
    ("task.42", {"status": "running", "completedDevices": 1.5}, "data.completedDevices"),
    ("task.42", {"status": "running", "currentDevice": "x" * 201}, "data.currentDevice"),
])
def test_published_update_problems(topic: str, data: object, field: str) -> None:
    parsed, problems = t.read_published_update(topic, data)
    assert parsed is None
    assert field in [p[0] for p in problems]
