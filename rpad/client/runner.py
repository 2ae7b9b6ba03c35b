"""Running one command for the console: a process group with a time limit, an output limit,
output in bounded chunks under credit-based flow control, and a kill that leaves nothing behind.

:class:`Runner` admits a command under the host's :class:`~rpad.client.policy.CommandPolicy`
(refusing with :class:`~rpad.client.policy.CommandRefused`) and returns an :class:`Execution`,
whose :meth:`Execution.run` starts the process and reports its output through an ``emit``
callback until it is done.

How a command runs:

- in its own session and process group (``setsid``), stdin ``/dev/null``, stdout and stderr
  pipes, a clean environment (``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``LANG``,
  ``TERM=dumb``, ``RPAD_COMMAND_ID`` and ``RPAD_AGENT``; nothing of the agent's own, so neither
  ``$RPAD_TOKEN`` nor ``$CREDENTIALS_DIRECTORY`` leaks), in the run-as user's home directory
  (``/`` if it has none), as that user when the policy says so;
- **output** is read only while the consumer has granted *credit* (bytes): rpad grants it as
  the console acknowledges what it has shown. Without credit the agent stops reading, the pipe
  fills and the command blocks on its next write, so a command printing gigabytes costs the
  agent one chunk of memory, not gigabytes. Chunks are at most ``chunk_bytes`` of raw output,
  decoded as UTF-8 per stream (a character split between two chunks is kept whole; invalid
  bytes become U+FFFD). stdout and stderr together stop at the output limit: the agent closes
  its ends of the pipes (the command gets SIGPIPE on its next write) and reports
  ``truncated``;
- **ends**: when the command's first process exits, whatever it left running in its process
  group is killed (SIGKILL), and so is any process that carries the command's
  ``RPAD_COMMAND_ID`` in its environment (a daemon that left the group with ``setsid`` or a
  double fork); then the pipes are drained for at most :data:`DRAIN_SECONDS`. On the **time
  limit** the whole group is killed with SIGKILL (status ``timeout``). On **cancel** the group
  gets SIGINT, then SIGKILL after the policy's grace (status ``cancelled``). When the run is
  **cancelled from outside** (the control channel was lost, the agent stops) the group is
  killed with SIGKILL before the cancellation goes on.

Resource handling: each execution owns its process and both pipes and releases them on every
path (shielded clean-up: kill, reap, sweep). Memory per execution is bounded by one chunk per
stream. The ``/proc`` sweep runs in a worker thread.

Error handling: a program that cannot be started (no such file, permission denied, the user
switch failed) gives exit code 127 (126 for permission) and a line on stderr, like a shell
would, rather than an exception. ``emit`` raising (the channel broke) ends the run with the
same kill as an outside cancellation.

If the agent itself is killed (SIGKILL, the OOM killer) it cannot kill its commands; the next
run of the agent kills every process whose environment names it (``RPAD_AGENT=<client id>``,
:meth:`Runner.sweep_leftovers`) before it takes commands again, and under systemd the unit's
cgroup is killed with the agent anyway (``KillMode=control-group``).

What escapes: a command that deliberately leaves its process group *and* clears its
environment is not found (it runs code as the run-as user; it could as well install a cron job).
That is what the allowlist and ``--run-as`` are for.
"""

from __future__ import annotations

import array
import codecs
import errno
import fcntl
import functools
import logging
import os
import secrets
import signal
import subprocess
import termios
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from .policy import BUSY, SAFE_PATH, CommandPolicy, CommandRefused, RunAs

log = logging.getLogger(__name__)

CHUNK_BYTES = 8192
# The most credit a consumer may hold outstanding (a bound on a confused or hostile peer).
MAX_CREDIT_BYTES = 16 * 1024 * 1024
# After the command's first process has exited: how long to wait for the pipes to close.
DRAIN_SECONDS = 5.0
# How long to wait for a killed process to be reaped before giving up on it (it is stuck in
# the kernel, e.g. on a dead NFS mount; SIGKILL takes effect when it comes back).
REAP_SECONDS = 5.0
ENV_MARKER = "RPAD_COMMAND_ID"
# Names the agent that started a command (its client id), so that a new run of the agent can
# find what a run that died (SIGKILL, OOM) left behind.
ENV_OWNER = "RPAD_AGENT"
# How long the sweep waits for the processes it killed to be gone (a zombie counts as gone:
# its environment is empty). SIGKILL is delivered when the process next runs.
SWEEP_WAIT_SECONDS = 2.0
SWEEP_POLL_SECONDS = 0.01

SUCCESS = "success"
ERROR = "error"
TIMEOUT = "timeout"
CANCELLED = "cancelled"

Emit = Callable[[str, str, int], Awaitable[None]]
"""``emit(stream, text, nbytes)``: ``stream`` is ``"stdout"`` or ``"stderr"``, ``text`` the
decoded chunk, ``nbytes`` the raw bytes it came from (what the credit counts)."""


@attrs.frozen
class Result:
    """How a command ended. ``exit_code`` is None when it was killed by a signal (then
    ``signal`` names it)."""

    exit_code: int | None
    signal: int | None
    status: str
    duration_ms: int
    truncated: bool
    output_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"exitCode": self.exit_code, "signal": self.signal, "status": self.status,
                "durationMs": self.duration_ms, "truncated": self.truncated,
                "outputBytes": self.output_bytes}


class Credit:
    """Bytes of output the consumer is ready for. :meth:`take` waits for some."""

    def __init__(self, initial: int) -> None:
        self.available = max(0, min(initial, MAX_CREDIT_BYTES))
        self._changed = trio.Event()

    def grant(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        self.available = min(self.available + nbytes, MAX_CREDIT_BYTES)
        self._changed.set()
        self._changed = trio.Event()

    def refund(self, nbytes: int) -> None:
        if nbytes > 0:
            self.grant(nbytes)

    async def take(self, most: int) -> int:
        """Reserve up to ``most`` bytes (at least 1) once any credit is there."""
        while self.available <= 0:
            await self._changed.wait()
        n = min(most, self.available)
        self.available -= n
        return n


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it is gone already."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - the group is ours; a pid reused by another
        log.warning("not allowed to signal process group %d", pgid)
        return False
    return True


def find_marked(marker: str, proc: Path = Path("/proc"), name: str = ENV_MARKER) -> list[int]:
    """Pids of live processes whose environment holds ``<name>=marker``."""
    needle = f"{name}={marker}".encode()
    me = os.getpid()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:  # gone, a zombie, or not ours to read
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def sweep_marked(marker: str, name: str = ENV_MARKER, *, group: int | None = None) -> int:
    """SIGKILL every live process carrying the marker, and wait (at most
    SWEEP_WAIT_SECONDS, in the calling thread) until none is left; returns how many of them
    were outside process group ``group`` (had left it), or all of them without a group."""
    escaped: set[int] = set()
    deadline = time.monotonic() + SWEEP_WAIT_SECONDS
    while True:
        pids = find_marked(marker, name=name)  # again: one may have forked meanwhile
        if not pids:
            break
        for pid in pids:
            try:
                if group is None or os.getpgid(pid) != group:
                    escaped.add(pid)
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if time.monotonic() >= deadline:
            log.warning("processes marked %s=%s still alive %g s after SIGKILL: %s", name,
                        marker, SWEEP_WAIT_SECONDS, pids)
            break
        time.sleep(SWEEP_POLL_SECONDS)
    return len(escaped)


def child_environment(user: RunAs | None, marker: str, owner: str = "") -> dict[str, str]:
    """The command's whole environment: nothing inherited from the agent."""
    env = {"PATH": SAFE_PATH, "LANG": os.environ.get("LANG", "C.UTF-8") or "C.UTF-8",
           "TERM": "dumb", ENV_MARKER: marker}
    if owner:
        env[ENV_OWNER] = owner
    if user is not None:
        env.update(HOME=user.home or "/", USER=user.name, LOGNAME=user.name,
                   SHELL=user.shell or "/bin/sh")
    return env


class Execution:
    """One admitted command. Call :meth:`run` once; :meth:`grant` and :meth:`cancel` at any
    time from other tasks."""

    def __init__(self, runner: Runner, command_id: str, argv: list[str], *,
                 timeout_seconds: float, max_output_bytes: int, credit_bytes: int,
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        self.runner = runner
        self.command_id = command_id
        self.argv = argv
        self.timeout_seconds = timeout_seconds
        self.max_output_bytes = max_output_bytes
        self.chunk_bytes = max(1, chunk_bytes)
        self.credit = Credit(credit_bytes)
        self.marker = secrets.token_hex(12)
        self.pid: int | None = None
        self.output_bytes = 0
        self.truncated = False
        self.cancel_reason: str | None = None
        self._cancel_requested = trio.Event()
        self._limit_left = max_output_bytes
        self._pipes: list[trio.lowlevel.FdStream] = []
        self._cleaned = False

    def grant(self, nbytes: int) -> None:
        self.credit.grant(nbytes)

    def cancel(self, reason: str = "cancel") -> None:
        """SIGINT to the group now, SIGKILL after the grace (once)."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self._cancel_requested.set()

    async def run(self, emit: Emit) -> Result:
        started = trio.current_time()
        try:
            return await self._run(emit, started)
        finally:
            self.runner._finished(self)

    async def _run(self, emit: Emit, started: float) -> Result:
        policy = self.runner.policy
        user = policy.run_as
        options: dict[str, Any] = {}
        if policy.switch_user and user is not None:
            options = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
        cwd = user.home if user is not None and user.home and os.path.isdir(user.home) else "/"
        try:
            proc = await trio.lowlevel.open_process(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, close_fds=True, cwd=cwd,
                env=child_environment(user, self.marker, self.runner.owner), **options)
        except OSError as exc:
            code = 126 if exc.errno in (errno.EACCES, errno.EPERM) else 127
            text = f"rpad agent: cannot run {self.argv[0]}: {exc.strerror or exc}\n"
            await emit("stderr", text, 0)
            return Result(code, None, ERROR, _ms(started), False, 0)
        self.pid = proc.pid
        assert isinstance(proc.stdout, trio.lowlevel.FdStream)
        assert isinstance(proc.stderr, trio.lowlevel.FdStream)
        self._pipes = [proc.stdout, proc.stderr]
        eof = {"stdout": False, "stderr": False}
        timed_out = False
        try:
            async with trio.open_nursery() as pumps:
                pumps.start_soon(self._pump, "stdout", proc.stdout, emit, eof)
                pumps.start_soon(self._pump, "stderr", proc.stderr, emit, eof)
                with trio.move_on_after(self.timeout_seconds) as timer:
                    async with trio.open_nursery() as waiting:
                        waiting.start_soon(self._signal_on_cancel, proc.pid)
                        await proc.wait()
                        waiting.cancel_scope.cancel()
                if timer.cancelled_caught:
                    timed_out = True
                    log.info("command %s timed out after %g s: killing its process group",
                             self.command_id, self.timeout_seconds)
                # Whatever the first process left behind goes with it.
                await self._kill_everything(proc)
                pumps.cancel_scope.deadline = min(pumps.cancel_scope.deadline,
                                                  trio.current_time() + DRAIN_SECONDS)
        finally:
            with trio.CancelScope(shield=True):
                await self._kill_everything(proc)
                for pipe in self._pipes:
                    await pipe.aclose()
        if not (eof["stdout"] and eof["stderr"]):
            self.truncated = True  # drained only in part (no credit, or a pipe held open)
        rc = proc.returncode
        exit_code: int | None = rc
        sig: int | None = None
        if rc is None or rc < 0:
            exit_code = None
            sig = -(rc or 0)
        if self.cancel_reason is not None:
            status = CANCELLED
        elif timed_out:
            status = TIMEOUT
        elif exit_code == 0:
            status = SUCCESS
        else:
            status = ERROR
        return Result(exit_code, sig, status, _ms(started), self.truncated, self.output_bytes)

    async def _signal_on_cancel(self, pgid: int) -> None:
        await self._cancel_requested.wait()
        log.info("command %s: %s: SIGINT to its process group", self.command_id,
                 self.cancel_reason)
        _killpg(pgid, signal.SIGINT)
        await trio.sleep(self.runner.policy.kill_grace_seconds)
        log.info("command %s: still running %g s after SIGINT: SIGKILL", self.command_id,
                 self.runner.policy.kill_grace_seconds)
        _killpg(pgid, signal.SIGKILL)

    async def _kill_everything(self, proc: trio.Process) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        _killpg(proc.pid, signal.SIGKILL)
        with trio.move_on_after(REAP_SECONDS) as scope:
            await proc.wait()
        if scope.cancelled_caught:  # pragma: no cover - needs a process stuck in the kernel
            log.warning("command %s: process %d did not die within %g s of SIGKILL",
                        self.command_id, proc.pid, REAP_SECONDS)
        swept = await trio.to_thread.run_sync(
            functools.partial(sweep_marked, self.marker, group=proc.pid))
        if swept:
            log.info("command %s: killed %d process(es) that had left its process group",
                     self.command_id, swept)

    async def _pump(self, name: str, pipe: trio.lowlevel.FdStream, emit: Emit,
                    eof: dict[str, bool]) -> None:
        """Forward one pipe: wait until it is readable, then take credit for what is there
        (so an idle stream holds no credit), read, account, emit."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            while True:
                await trio.lowlevel.wait_readable(pipe.fileno())
                ready = _bytes_ready(pipe.fileno())
                if ready == 0:  # readable with nothing to read: end of file
                    break
                if self._limit_left <= 0:
                    self._truncate()
                    return
                want = await self.credit.take(min(self.chunk_bytes, ready, self._limit_left))
                data = await pipe.receive_some(want)
                keep = min(len(data), self._limit_left)  # the other stream may have used some
                self.credit.refund(want - keep)
                self._limit_left -= keep
                self.output_bytes += keep
                if keep:
                    await emit(name, decoder.decode(data[:keep]), keep)
                if keep < len(data):
                    self._truncate()
                    return  # a character cut at the limit is dropped, not replaced
        except trio.ClosedResourceError:  # closed at the limit by the other stream's pump
            return
        tail = decoder.decode(b"", final=True)
        if tail:
            await emit(name, tail, 0)
        eof[name] = True

    def _truncate(self) -> None:
        """The output limit is reached: stop reading both pipes (SIGPIPE for the writer)."""
        if not self.truncated:
            self.truncated = True
            log.info("command %s reached its output limit of %d bytes", self.command_id,
                     self.max_output_bytes)
            for pipe in self._pipes:
                # Closing wakes the other pump with ClosedResourceError.
                pipe.close()


def _bytes_ready(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD); 0 at end of file."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    return buf[0]


def _ms(started: float) -> int:
    return round((trio.current_time() - started) * 1000)


class Runner:
    """Admits commands under the policy and counts the running ones."""

    def __init__(self, policy: CommandPolicy, owner: str = "") -> None:
        self.policy = policy
        # The agent's client id (RPAD_AGENT in the commands' environment).
        self.owner = owner
        self.running: dict[str, Execution] = {}

    def sweep_leftovers(self) -> int:
        """Kill what an earlier run of this agent left running (it was killed before it could
        kill its commands). Call before running anything; returns how many were killed."""
        if not self.owner or self.running:
            return 0
        killed = sweep_marked(self.owner, ENV_OWNER)
        if killed:
            log.warning("killed %d process(es) that an earlier run of this agent left behind",
                        killed)
        return killed

    def admit(self, command_id: str, command: str, *, timeout_seconds: float | None,
              max_output_bytes: int | None, credit_bytes: int,
              chunk_bytes: int = CHUNK_BYTES) -> Execution:
        """An Execution for ``command``, or CommandRefused (disabled, not allowed, invalid,
        busy). Timeout and output limit are the policy's maximum at most."""
        argv = self.policy.plan(command)
        if len(self.running) >= self.policy.max_concurrent:
            raise CommandRefused(BUSY, f"this host already runs {self.policy.max_concurrent} "
                                 "commands (its owner's limit)")
        p = self.policy
        timeout = min(timeout_seconds or p.max_timeout_seconds, p.max_timeout_seconds)
        limit = min(max_output_bytes or p.max_output_bytes, p.max_output_bytes)
        ex = Execution(self, command_id, argv, timeout_seconds=timeout, max_output_bytes=limit,
                       credit_bytes=credit_bytes, chunk_bytes=chunk_bytes)
        self.running[command_id] = ex
        return ex

    def _finished(self, ex: Execution) -> None:
        if self.running.get(ex.command_id) is ex:
            del self.running[ex.command_id]
