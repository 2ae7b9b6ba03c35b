"""Batch tasks as values: statuses, a task's counts and progress, the ``TASK_UPDATE`` shape, and
reading a ``TASK_UPDATE`` that another system publishes.

A task runs one command on many clients. Each client's result goes ``pending`` → ``running`` →
one of ``success``, ``error`` (non-zero exit), ``timeout``, ``cancelled``, ``failed`` (it never
ran: offline, no control channel, commands disabled, refused by the agent's allowlist, or the
agent was lost mid-command) or ``interrupted`` (rpad stopped while it ran).

The task's ``status`` is ``pending`` (accepted, nothing started), ``running``, then
``completed`` (every client succeeded), ``failed`` (at least one did not), ``cancelled`` or
``interrupted`` (rpad restarted while it ran; nothing is retried on its own).
``completedDevices`` counts the clients that succeeded, ``failedDevices`` those that did not,
and ``progress`` is the share of clients finished either way, in percent (100 when the task
has ended).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
import re
from typing import Any

import attrs

from .times import iso

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
TASK_STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, INTERRUPTED)
TASK_ENDED = frozenset({COMPLETED, FAILED, CANCELLED, INTERRUPTED})

# Per-client results.
R_PENDING = "pending"
R_RUNNING = "running"
R_SUCCESS = "success"
R_ERROR = "error"
R_TIMEOUT = "timeout"
R_CANCELLED = "cancelled"
R_FAILED = "failed"
R_INTERRUPTED = "interrupted"
RESULT_ENDED = frozenset({R_SUCCESS, R_ERROR, R_TIMEOUT, R_CANCELLED, R_FAILED, R_INTERRUPTED})

TASK_UPDATE = "TASK_UPDATE"
TASK_TOPIC_PREFIX = "task."
TASK_ID_RE = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,99}")
MAX_TEXT_CHARS = 200


def task_topic(task_id: str) -> str:
    return TASK_TOPIC_PREFIX + task_id


@attrs.frozen
class Counts:
    total: int
    succeeded: int
    failed: int

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def progress(self) -> float:
        """Finished share in percent, one decimal; 100 when every client is done."""
        if self.total == 0:
            return 100.0
        if self.finished >= self.total:
            return 100.0
        return math.floor(1000.0 * self.finished / self.total) / 10.0


def counts(results: list[str]) -> Counts:
    """Counts from the per-client result statuses."""
    ok = sum(1 for r in results if r == R_SUCCESS)
    bad = sum(1 for r in results if r in RESULT_ENDED and r != R_SUCCESS)
    return Counts(len(results), ok, bad)


def final_status(c: Counts, *, cancelled: bool) -> str:
    if cancelled:
        return CANCELLED
    return COMPLETED if c.failed == 0 else FAILED


def update_data(task_id: str, status: str, c: Counts, current: str | None) -> dict[str, Any]:
    """The ``TASK_UPDATE`` payload."""
    return {"taskId": task_id, "status": status,
            "progress": 100.0 if status in TASK_ENDED else c.progress,
            "currentDevice": current, "totalDevices": c.total,
            "completedDevices": c.succeeded, "failedDevices": c.failed}


# -- TASK_UPDATE published by other systems ------------------------------------------------------

_ALIASES = {"taskId": "task_id", "currentDevice": "current_device",
            "totalDevices": "total_devices", "completedDevices": "completed_devices",
            "failedDevices": "failed_devices"}


def _get(data: dict[str, Any], key: str) -> Any:
    if key in data:
        return data[key]
    return data.get(_ALIASES.get(key, key))


def _count(data: dict[str, Any], key: str, problems: list[tuple[str, str]]) -> int | None:
    value = _get(data, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append((f"data.{key}", "must be a non-negative integer"))
        return None
    return value


def read_published_update(topic: str, data: Any) -> tuple[dict[str, Any] | None,
                                                           list[tuple[str, str]]]:
    """A ``TASK_UPDATE`` another system publishes to ``task.<id>``, in rpad's shape (camelCase;
    the seed's snake_case spellings are accepted), or the problems (field path, why).

    The task id is the topic's; a ``taskId`` in the data must name the same task."""
    problems: list[tuple[str, str]] = []
    if not topic.startswith(TASK_TOPIC_PREFIX):
        return None, [("topic", "a TASK_UPDATE goes to a topic named task.<taskId>")]
    task_id = topic[len(TASK_TOPIC_PREFIX):]
    if not TASK_ID_RE.fullmatch(task_id):
        problems.append(("topic", "the task id after task. must match " + TASK_ID_RE.pattern))
    if not isinstance(data, dict):
        return None, [*problems, ("data", "a TASK_UPDATE needs an object")]
    given = _get(data, "taskId")
    if given is not None and str(given) != task_id:
        problems.append(("data.taskId", f"must be the topic's task id {task_id!r}"))
    status = data.get("status")
    if status not in TASK_STATUSES:
        problems.append(("data.status", "must be one of " + ", ".join(TASK_STATUSES)))
    progress = data.get("progress")
    if progress is not None and (isinstance(progress, bool)
                                 or not isinstance(progress, int | float)
                                 or not 0 <= progress <= 100):
        problems.append(("data.progress", "must be a number from 0 to 100"))
    current = _get(data, "currentDevice")
    if current is not None and (not isinstance(current, str | int) or isinstance(current, bool)
                                or len(str(current)) > MAX_TEXT_CHARS):
        problems.append(("data.currentDevice",
                         f"must be a string of at most {MAX_TEXT_CHARS} characters"))
    total = _count(data, "totalDevices", problems)
    done = _count(data, "completedDevices", problems)
    failed = _count(data, "failedDevices", problems)
    if problems:
        return None, problems
    return {"taskId": task_id, "status": status,
            "progress": float(progress) if progress is not None else None,
            "currentDevice": str(current) if current is not None else None,
            "totalDevices": total, "completedDevices": done, "failedDevices": failed}, []


# -- records (what the store keeps, what the API returns) -----------------------------------------


@attrs.define(eq=False)
class ResultRecord:
    """One client's part of a task."""

    client_id: str
    status: str = R_PENDING
    exit_code: int | None = None
    signal: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    duration_ms: int | None = None
    output_bytes: int = 0
    truncated: bool = False
    error: str | None = None
    output_tail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"clientId": self.client_id, "status": self.status, "exitCode": self.exit_code,
                "signal": self.signal, "startedAt": iso(self.started_at),
                "endedAt": iso(self.ended_at), "durationMs": self.duration_ms,
                "outputBytes": self.output_bytes, "truncated": self.truncated,
                "error": self.error, "outputTail": self.output_tail}


@attrs.define(eq=False)
class TaskRecord:
    """A task: rpad's own (``source = "rpad"``) or one another system reports by publishing
    ``TASK_UPDATE`` (``source = "publish"``: no command, no per-client results)."""

    task_id: str
    source: str
    created_at: float
    status: str
    command: str | None = None
    created_by: str | None = None
    role: str | None = None
    address: str | None = None
    selector: dict[str, Any] = attrs.Factory(dict)
    concurrency: int | None = None
    timeout_seconds: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    progress: float = 0.0
    current_device: str | None = None

    def update(self) -> dict[str, Any]:
        """The ``TASK_UPDATE`` payload for this record."""
        return {"taskId": self.task_id, "status": self.status, "progress": self.progress,
                "currentDevice": self.current_device, "totalDevices": self.total,
                "completedDevices": self.succeeded, "failedDevices": self.failed}

    def to_json(self) -> dict[str, Any]:
        return {**self.update(), "source": self.source, "command": self.command,
                "createdBy": self.created_by, "createdAt": iso(self.created_at),
                "startedAt": iso(self.started_at), "endedAt": iso(self.ended_at),
                "concurrency": self.concurrency, "timeoutSeconds": self.timeout_seconds,
                **({"clientIds": self.selector["clientIds"]} if "clientIds" in self.selector
                   else {}),
                **({"tag": self.selector["tag"]} if "tag" in self.selector else {})}

    def apply(self, c: Counts, current: str | None) -> None:
        self.total, self.succeeded, self.failed = c.total, c.succeeded, c.failed
        self.progress = 100.0 if self.status in TASK_ENDED else c.progress
        self.current_device = current
