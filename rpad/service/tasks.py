"""Batch tasks: one command on many clients, a few at a time, with live progress.

``POST /api/v1/tasks`` creates a task (:meth:`Tasks.create`): its targets are the named
clients or every client with a tag, each of which the caller's token must be allowed to reach
(:mod:`rpad.core.exec_access`); it is recorded (durably, with an audit row) before ``202`` is
answered, then runs in the background: at most ``concurrency`` clients at once, each through
the same command path as the console (:class:`~rpad.service.commands.Commands`), with rpad
taking the output itself (it keeps the last ``console.task_output_tail_bytes`` per client).

A client whose agent cannot take the command fails at once, without waiting for a slot or a
timeout: offline, no control channel, commands disabled on the host. A client whose agent is
lost while the command runs fails then. The agent enforces the command's time limit; rpad
gives up on a client that has not answered ``RESULT_GRACE_SECONDS`` after it.

Every change is published as ``TASK_UPDATE`` on the topic ``task.<taskId>`` (through the
broker, so every node's subscribers see it) and sent to the user who created it. Tasks and
their per-client results are kept in the store; a task that was running when rpad stopped is
marked ``interrupted`` at the next start (its clients that had not finished too), and is not
run again on its own.

Tasks other systems run are reported the same way: a ``TASK_UPDATE`` published to
``task.<id>`` through ``/api/v1/publish`` is recorded (:meth:`Tasks.record_published`) and
listed with rpad's own.

Resource handling: :meth:`Tasks.run` owns a nursery (in the daemon's) where the tasks run; at
most ``console.max_running_tasks_per_user`` run per user. Error handling: a bad request raises
:class:`TaskError` (status, code, message, details) for the API to answer; a task's runner never
raises (every client ends in a result).
"""

from __future__ import annotations

import collections
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from ..backend.base import AuditLog, AuditRecord, Broker, PresenceView, TaskStore
from ..config import ConsoleConfig
from ..core import tasks as t
from ..core.errors import StorageUnavailable
from ..core.exec_access import may_exec, may_exec_anywhere
from ..core.jsonenc import dumps
from ..core.model import ONLINE
from ..core.principal import Principal
from .commands import Command, Commands, Unavailable

log = logging.getLogger(__name__)

# rpad waits this long past a command's time limit for the agent's answer before it gives up.
RESULT_GRACE_SECONDS = 30.0
PRUNE_INTERVAL_SECONDS = 3600.0
MAX_TARGETS = 10_000


class TaskError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 details: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details)


@attrs.frozen
class TaskRequest:
    command: str
    client_ids: tuple[str, ...] | None
    tag: str | None
    concurrency: int | None
    timeout_seconds: float | None


@attrs.define(eq=False)
class _Running:
    record: t.TaskRecord
    results: dict[str, t.ResultRecord]
    order: list[str]
    positions: dict[str, int] = attrs.Factory(dict)
    cancelled: bool = False
    commands: dict[str, Command] = attrs.Factory(dict)
    scope: trio.CancelScope | None = None


class Tasks:
    def __init__(self, commands: Commands, broker: Broker, view: PresenceView,
                 store: TaskStore, audit: AuditLog, config: Callable[[], ConsoleConfig], *,
                 wall_clock: Callable[[], float]) -> None:
        self.commands = commands
        self.broker = broker
        self.view = view
        self.store = store
        self.audit = audit
        self.config = config
        self.wall_clock = wall_clock
        self.running: dict[str, _Running] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Mark tasks a previous run left running as interrupted, then run tasks until
        cancelled (which cancels the running ones: their agents are told to stop)."""
        interrupted = await self.store.interrupt_running(self.wall_clock())
        if interrupted:
            log.warning("%d task(s) were running when rpad stopped: marked interrupted",
                        interrupted)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    self.store.prune(self.wall_clock() - self.config().retention_days * 86400)
                    await trio.sleep(PRUNE_INTERVAL_SECONDS)
        finally:
            self._nursery = None
            self._interrupt_all()

    def _interrupt_all(self) -> None:
        """rpad is stopping: the running tasks end as interrupted (their commands are cancelled
        on the agents, which also kill them when the channel closes). Staged only: the store's
        last commit at shutdown writes it."""
        now = self.wall_clock()
        for run in list(self.running.values()):
            rec = run.record
            for cmd in run.commands.values():
                self.commands.cancel(cmd, "rpad is stopping")
            for pos, cid in enumerate(run.order):
                res = run.results[cid]
                if res.status not in t.RESULT_ENDED:
                    res.status, res.ended_at = t.R_INTERRUPTED, now
                    res.error = "rpad stopped while it ran"
                    self.store.put_result(rec.task_id, pos, res)
            c = t.counts([r.status for r in run.results.values()])
            rec.status, rec.ended_at = t.INTERRUPTED, now
            rec.apply(c, None)
            self.store.put_task(rec)
            self.audit.end(rec.task_id, at=now, status=t.INTERRUPTED, detail="rpad stopped")
            self.broker.publish_nowait(t.task_topic(rec.task_id), t.TASK_UPDATE,
                                       dumps(rec.update()))
            log.warning("task %s interrupted: rpad is stopping", rec.task_id)
        self.running.clear()

    # -- creating ------------------------------------------------------------------------------

    def _targets(self, p: Principal, req: TaskRequest) -> list[str]:
        problems: list[tuple[str, str]] = []
        if req.client_ids is not None:
            targets = list(dict.fromkeys(req.client_ids))
            for i, cid in enumerate(req.client_ids):
                if self.view.get(cid) is None:
                    problems.append((f"clientIds[{i}]", f"there is no client {cid}"))
        else:
            assert req.tag is not None
            targets = sorted(c.client_id for c in self.view if req.tag in c.tags)
            if not targets:
                problems.append(("tag", f"no client has the tag {req.tag}"))
        if problems:
            raise TaskError(422, "validation_failed", "the task names clients that do not exist",
                            problems)
        if len(targets) > MAX_TARGETS:
            raise TaskError(422, "validation_failed", f"a task may run on at most {MAX_TARGETS} "
                            "clients", [("clientIds", "too many clients")])
        for cid in targets:
            client = self.view.get(cid)
            if not may_exec(p.role, p.exec, cid, client.tags if client is not None else []):
                raise TaskError(403, "forbidden", f"this token may not run commands on {cid}")
        return targets

    def require_creator(self, p: Principal) -> None:
        """TaskError 403 unless the console is on and ``p`` may run tasks at all (checked before
        a request's body is read, so that a token that may not gets 403, whatever it sent)."""
        if not self.config().enabled:
            raise TaskError(403, "console_disabled", "the console and tasks are switched off on "
                            "this rpad (console.enabled = false)")
        if not may_exec_anywhere(p.role, p.exec):
            raise TaskError(403, "forbidden", "running tasks needs an admin token or an operator "
                            f"token with an exec claim; this token's role is {p.role}")

    async def create(self, p: Principal, req: TaskRequest, *,
                     address: str | None) -> t.TaskRecord:
        cfg = self.config()
        self.require_creator(p)
        targets = self._targets(p, req)
        mine = sum(1 for r in self.running.values() if r.record.created_by == p.sub)
        if mine >= cfg.max_running_tasks_per_user:
            raise TaskError(429, "too_many_tasks", f"at most {cfg.max_running_tasks_per_user} "
                            "running tasks per user; wait for one to end or cancel it")
        if self._nursery is None:
            raise TaskError(503, "not_ready", "rpad is starting or stopping")
        now = self.wall_clock()
        concurrency = min(req.concurrency or cfg.task_default_concurrency,
                          cfg.task_max_concurrency)
        timeout = min(req.timeout_seconds or cfg.command_timeout_seconds,
                      cfg.max_command_timeout_seconds)
        selector: dict[str, Any] = ({"clientIds": targets} if req.client_ids is not None
                                    else {"tag": req.tag})
        record = t.TaskRecord(task_id=secrets.token_hex(8), source="rpad", created_at=now,
                              status=t.PENDING, command=req.command, created_by=p.sub,
                              role=p.role, address=address, selector=selector,
                              concurrency=concurrency, timeout_seconds=timeout)
        results = {cid: t.ResultRecord(cid) for cid in targets}
        record.apply(t.counts([r.status for r in results.values()]), None)
        self.store.put_task(record)
        for i, cid in enumerate(targets):
            self.store.put_result(record.task_id, i, results[cid])
        self.audit.begin(AuditRecord(ref=record.task_id, kind="task", at=now, user_id=p.sub,
                                     role=p.role, address=address, client_id=None,
                                     task_id=record.task_id, command=req.command,
                                     status="requested",
                                     detail=dumps(selector)[:500]))
        try:
            await self.store.durable()
            await self.audit.durable()
        except StorageUnavailable as exc:
            raise TaskError(503, "storage_unavailable", "rpad cannot record the task right now, "
                            f"so it does not run it: {exc}") from None
        run = _Running(record, results, targets, {cid: i for i, cid in enumerate(targets)})
        self.running[record.task_id] = run
        log.info("task %s by %s (%s) from %s: %r on %d client(s), %d at once", record.task_id,
                 p.sub, p.role, address, req.command, len(targets), concurrency)
        self._nursery.start_soon(self._execute, run)
        return record

    # -- running -------------------------------------------------------------------------------

    async def _execute(self, run: _Running) -> None:
        rec = run.record
        rec.status, rec.started_at = t.RUNNING, self.wall_clock()
        await self._changed(run)
        limiter = trio.CapacityLimiter(rec.concurrency or 1)
        with trio.CancelScope() as scope:
            run.scope = scope
            async with trio.open_nursery() as nursery:
                for cid in run.order:
                    nursery.start_soon(self._one, run, cid, limiter)
        c = t.counts([r.status for r in run.results.values()])
        rec.status = t.final_status(c, cancelled=run.cancelled)
        rec.ended_at = self.wall_clock()
        rec.apply(c, None)
        self.audit.end(rec.task_id, at=rec.ended_at, status=rec.status,
                       detail=f"{c.succeeded} succeeded, {c.failed} failed of {c.total}")
        self.running.pop(rec.task_id, None)
        log.info("task %s %s: %d succeeded, %d failed of %d", rec.task_id, rec.status,
                 c.succeeded, c.failed, c.total)
        await self._changed(run)

    def _unavailable(self, cid: str) -> tuple[str, str] | None:
        client = self.view.get(cid)
        if client is None:
            return "unknown_client", f"{cid} was removed"
        if client.status != ONLINE:
            return "client_offline", f"{cid} is {client.status}"
        port = self.commands.directory.port(cid)
        if port is None:
            return "agent_not_connected", f"the agent of {cid} has no control channel to rpad"
        if not port.capabilities.get("commands"):
            return "commands_disabled", f"commands are disabled on {cid} by its owner"
        return None

    async def _one(self, run: _Running, cid: str, limiter: trio.CapacityLimiter) -> None:
        res = run.results[cid]
        why = self._unavailable(cid)
        if why is None:
            async with limiter:
                why = self._unavailable(cid)
                if run.cancelled:
                    await self._end(run, res, t.R_CANCELLED, error="cancelled before it started")
                    return
                if why is None:
                    await self._run_on(run, res)
                    return
        await self._end(run, res, t.R_FAILED, error=f"{why[0]}: {why[1]}")

    async def _run_on(self, run: _Running, res: t.ResultRecord) -> None:
        rec = run.record
        assert rec.command is not None and rec.timeout_seconds is not None
        sink = _TaskSink(self.config().task_output_tail_bytes)
        command_id = secrets.token_urlsafe(12)
        now = self.wall_clock()
        self.audit.begin(AuditRecord(ref=command_id, kind="command", at=now,
                                     user_id=rec.created_by or "", role=rec.role or "",
                                     address=rec.address, client_id=res.client_id,
                                     task_id=rec.task_id, command=rec.command,
                                     status="requested"))
        try:
            await self.audit.durable()
            if run.cancelled:  # while the record was being written
                self.audit.end(command_id, at=self.wall_clock(), status="not_run",
                               detail="cancelled")
                await self._end(run, res, t.R_CANCELLED, error="cancelled before it started")
                return
            cmd = self.commands.start(res.client_id, rec.command,
                                      timeout_seconds=rec.timeout_seconds,
                                      max_output_bytes=self.config().max_output_bytes,
                                      sink=sink, auto_credit=True, command_id=command_id)
        except (Unavailable, StorageUnavailable) as exc:
            code = exc.code if isinstance(exc, Unavailable) else "storage_unavailable"
            self.audit.end(command_id, at=self.wall_clock(), status="not_run", detail=code)
            await self._end(run, res, t.R_FAILED, error=f"{code}: {exc}")
            return
        run.commands[res.client_id] = cmd
        res.status, res.started_at = t.R_RUNNING, now
        rec.current_device = res.client_id
        await self._changed(run, res)
        with trio.move_on_after(rec.timeout_seconds + RESULT_GRACE_SECONDS):
            await sink.finished.wait()
        if not sink.finished.is_set():
            await self.commands.forget(cmd, "no_answer", f"no answer from {res.client_id}'s "
                                       f"agent {RESULT_GRACE_SECONDS:g} s past its time limit")
        run.commands.pop(res.client_id, None)
        r = sink.result or {}
        status = sink.status
        res.exit_code, res.signal = r.get("exitCode"), r.get("signal")
        res.duration_ms, res.truncated = r.get("durationMs"), bool(r.get("truncated"))
        res.output_bytes, res.output_tail = cmd.received, sink.tail_text()
        self.audit.end(command_id, at=self.wall_clock(), status=status,
                       exit_code=res.exit_code, output_bytes=cmd.received,
                       truncated=res.truncated, detail=sink.error)
        await self._end(run, res, status, error=sink.error)

    async def _end(self, run: _Running, res: t.ResultRecord, status: str, *,
                   error: str | None = None) -> None:
        res.status, res.ended_at, res.error = status, self.wall_clock(), error
        if res.started_at is None:
            res.started_at = res.ended_at
        await self._changed(run, res)

    async def _changed(self, run: _Running, res: t.ResultRecord | None = None) -> None:
        """Persist and announce a change of the task (and of one client's result)."""
        rec = run.record
        if rec.status not in t.TASK_ENDED:
            rec.apply(t.counts([r.status for r in run.results.values()]), rec.current_device)
        self.store.put_task(rec)
        if res is not None:
            self.store.put_result(rec.task_id, run.positions[res.client_id], res)
        data = dumps(rec.update())
        self.broker.publish_nowait(t.task_topic(rec.task_id), t.TASK_UPDATE, data)
        if rec.created_by:
            await self.broker.send_to_user(rec.created_by, t.TASK_UPDATE, data)

    # -- cancel, read --------------------------------------------------------------------------

    def _visible(self, p: Principal, rec: t.TaskRecord) -> bool:
        return p.is_admin or (p.role == "operator" and rec.created_by == p.sub)

    async def cancel(self, p: Principal, task_id: str) -> t.TaskRecord:
        run = self.running.get(task_id)
        if run is None or not self._visible(p, run.record):
            rec = await self._read(p, task_id)
            raise TaskError(409, "not_running", f"task {task_id} is {rec[0].status}, not running")
        if not run.cancelled:
            run.cancelled = True
            log.info("task %s cancelled by %s (%s)", task_id, p.sub, p.role)
            for cmd in list(run.commands.values()):
                self.commands.cancel(cmd, "cancel")
        return run.record

    async def _read(self, p: Principal,
                    task_id: str) -> tuple[t.TaskRecord, list[t.ResultRecord]]:
        if not may_exec_anywhere(p.role, p.exec):
            raise TaskError(403, "forbidden", "reading tasks needs an admin token or an operator "
                            "token with an exec claim")
        run = self.running.get(task_id)
        if run is not None:
            found: tuple[t.TaskRecord, list[t.ResultRecord]] | None = (
                run.record, [run.results[c] for c in run.order])
        else:
            found = await self.store.get_task(task_id)
        if found is None or not self._visible(p, found[0]):
            raise TaskError(404, "not_found", f"there is no task {task_id}")
        return found

    async def get(self, p: Principal, task_id: str) -> dict[str, Any]:
        rec, results = await self._read(p, task_id)
        return {**rec.to_json(), "results": [r.to_json() for r in results]}

    async def list(self, p: Principal, *, limit: int, offset: int,
                   status: str | None) -> dict[str, Any]:
        if not may_exec_anywhere(p.role, p.exec):
            raise TaskError(403, "forbidden", "reading tasks needs an admin token or an operator "
                            "token with an exec claim")
        owner = None if p.is_admin else p.sub
        records, total = await self.store.list_tasks(created_by=owner, status=status,
                                                     limit=limit, offset=offset)
        items = []
        for rec in records:
            live = self.running.get(rec.task_id)
            items.append((live.record if live is not None else rec).to_json())
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    def owns(self, task_id: str) -> bool:
        """Whether ``task_id`` is one of rpad's own running tasks (whose topic others may not
        publish to)."""
        return task_id in self.running

    def record_published(self, data: dict[str, Any], publisher: Principal) -> None:
        """A ``TASK_UPDATE`` another system published (already read by
        :func:`rpad.core.tasks.read_published_update`)."""
        task_id = data["taskId"]
        if task_id in self.running:
            return  # rpad's own task: its updates are rpad's
        now = self.wall_clock()
        total = data["totalDevices"] or 0
        done = data["completedDevices"] or 0
        failed = data["failedDevices"] or 0
        progress = data["progress"]
        if progress is None:
            progress = 100.0 * (done + failed) / total if total else 0.0
        rec = t.TaskRecord(task_id=task_id, source="publish", created_at=now,
                           status=data["status"], created_by=publisher.sub,
                           role=publisher.role, total=total, succeeded=done, failed=failed,
                           progress=round(float(progress), 1),
                           current_device=data["currentDevice"])
        if rec.status in t.TASK_ENDED:
            rec.ended_at = now
        self.store.put_published(rec)


class _TaskSink:
    """One client's command of a task (:class:`~rpad.service.commands.CommandSink`): keeps the
    tail of the output and the outcome."""

    def __init__(self, tail_bytes: int) -> None:
        self.tail: collections.deque[str] = collections.deque()
        self.tail_chars = 0
        self.tail_limit = max(0, tail_bytes)
        self.finished = trio.Event()
        self.result: dict[str, Any] | None = None
        self.status = t.R_FAILED
        self.error: str | None = None

    def tail_text(self) -> str:
        text = "".join(self.tail)
        return text[-self.tail_limit:] if self.tail_limit else ""

    async def started(self, cmd: Command) -> None:
        pass

    async def output(self, cmd: Command, stream: str, chunk: str, nbytes: int) -> None:
        self.tail.append(chunk)
        self.tail_chars += len(chunk)
        while self.tail_chars - len(self.tail[0]) >= self.tail_limit and len(self.tail) > 1:
            self.tail_chars -= len(self.tail.popleft())

    async def done(self, cmd: Command, result: dict[str, Any]) -> None:
        self.result, self.status = result, result["status"]
        self.finished.set()

    async def refused(self, cmd: Command, code: str, message: str) -> None:
        self.status, self.error = t.R_FAILED, f"{code}: {message}"
        self.finished.set()

    async def lost(self, cmd: Command, code: str, message: str) -> None:
        self.status, self.error = t.R_FAILED, f"{code}: {message}"
        self.finished.set()
