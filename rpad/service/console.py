"""The console: line-mode sessions from a user to one client's agent, bound, capped, audited.

A session is opened by a user whose token may run commands on the client (admin, or an
``operator`` token whose ``exec`` claim covers the client: :mod:`rpad.core.exec_access`). It
is bound to that user (the token's ``sub``) and that client: only the same user, or an admin,
can attach to it, send to it, cancel, read its history or close it; to anyone else a session id
does not exist (the same ``session_not_found`` for a forged id and for someone else's, so ids
cannot be probed). Every action re-checks the token's right to reach the client, so a narrower
token of the same user gets nothing through a session opened with a wider one.

Each user has at most ``console.max_sessions_per_user`` sessions open; one command runs at a
time in a session (line mode). A session whose user has had no connection to this node for
``console.detach_grace_seconds``, or that ran nothing for ``console.idle_timeout_seconds``, is
closed, and closing a session cancels its command.

Audit: every session, every command and every refusal is recorded in the store (who, from which
address, which client, the command line, start, end, exit status, bytes of output) and logged.
A command is recorded *before* it is sent: if the record cannot be made durable (storage
failure), the command is not run.

Messages to the browser go through the broker to the user (``send_to_user``), so they reach the
user's connections on every node; the page shows the sessions it knows (by ``sessionId``, or
``ref`` for the one it just opened).

Resource handling: sessions live in memory (a restart of rpad closes them; the agent kills
commands whose channel is lost); each keeps the last ``console.history_size`` commands with the
tail of their output. :meth:`Console.run` is the idle/detached sweeper, in the daemon's nursery.

Error handling: a refused action raises :class:`ConsoleError` with a code and a message for
``TERMINAL_ERROR``; nothing a user sends can raise anything else.
"""

from __future__ import annotations

import collections
import logging
import secrets
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ..backend.base import AuditLog, AuditRecord, Broker, PresenceView
from ..config import ConsoleConfig
from ..core.errors import StorageUnavailable
from ..core.exec_access import may_exec, may_exec_anywhere
from ..core.jsonenc import dumps
from ..core.principal import Principal
from ..core.times import iso
from .commands import Command, Commands, Unavailable

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 5.0
PRUNE_INTERVAL_SECONDS = 3600.0
TAIL_CHARS = 16 * 1024
MAX_COMMAND_CHARS = 8192
# Refusals recorded per user and minute (more are logged as a count, not stored one by one).
DENIED_RECORDS_PER_MINUTE = 30

TERMINAL_CONNECTED = "TERMINAL_CONNECTED"
TERMINAL_ERROR = "TERMINAL_ERROR"
TERMINAL_CLOSED = "TERMINAL_CLOSED"
TERMINAL_SESSIONS = "TERMINAL_SESSIONS"
COMMAND_START = "COMMAND_START"
COMMAND_OUTPUT = "COMMAND_OUTPUT"
COMMAND_DONE = "COMMAND_DONE"
COMMAND_HISTORY = "COMMAND_HISTORY"


class ConsoleError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.define(eq=False)
class Entry:
    """One command of a session, for ``terminal.history``."""

    command_id: str
    command: str
    started_at: float
    ended_at: float | None = None
    result: dict[str, Any] | None = None
    status: str = "running"
    tail: collections.deque[tuple[str, str]] = attrs.Factory(collections.deque)
    tail_chars: int = 0

    def keep(self, stream: str, chunk: str) -> None:
        self.tail.append((stream, chunk))
        self.tail_chars += len(chunk)
        while self.tail_chars > TAIL_CHARS and len(self.tail) > 1:
            self.tail_chars -= len(self.tail.popleft()[1])

    def to_json(self) -> dict[str, Any]:
        out = "".join(c for _, c in self.tail)
        return {"commandId": self.command_id, "command": self.command,
                "startedAt": iso(self.started_at), "endedAt": iso(self.ended_at),
                "status": self.status, **(self.result or {}),
                "output": out[-TAIL_CHARS:]}


@attrs.define(eq=False)
class Session:
    id: str
    user_id: str
    role: str
    client_id: str
    address: str | None
    opened_at: float
    audience: set[str]
    history: collections.deque[Entry]
    last_active: float
    running: Command | None = None
    entry: Entry | None = None
    detached_since: float | None = None
    closed: bool = False

    def summary(self) -> dict[str, Any]:
        return {"sessionId": self.id, "clientId": self.client_id, "userId": self.user_id,
                "openedAt": iso(self.opened_at),
                "running": self.running.id if self.running is not None else None}


class Console:
    """The console sessions of this node."""

    def __init__(self, commands: Commands, broker: Broker, view: PresenceView,
                 audit: AuditLog, config: Callable[[], ConsoleConfig], *,
                 wall_clock: Callable[[], float],
                 user_connected: Callable[[str], bool]) -> None:
        self.commands = commands
        self.broker = broker
        self.view = view
        self.audit = audit
        self.config = config
        self.wall_clock = wall_clock
        self.user_connected = user_connected
        self.sessions: dict[str, Session] = {}
        self.by_user: dict[str, set[str]] = {}
        self._denied: dict[str, tuple[float, int]] = {}
        self.denied = 0

    # -- checks --------------------------------------------------------------------------------

    def _require_exec(self, p: Principal, address: str | None, what: str,
                      client_id: str | None = None) -> None:
        if not self.config().enabled:
            raise ConsoleError("console_disabled", "the console is switched off on this rpad")
        if not may_exec_anywhere(p.role, p.exec):
            self._deny(p, address, client_id, "forbidden", what)
            raise ConsoleError("forbidden", f"running commands needs an admin token or an "
                               f"operator token with an exec claim; this token's role is "
                               f"{p.role}")

    def _require_client(self, p: Principal, client_id: str, address: str | None,
                        what: str) -> None:
        client = self.view.get(client_id)
        tags = client.tags if client is not None else []
        if not may_exec(p.role, p.exec, client_id, tags):
            self._deny(p, address, client_id, "forbidden", what)
            raise ConsoleError("forbidden", f"this token may not run commands on {client_id}")
        if client is None:
            raise ConsoleError("unknown_client", f"there is no client {client_id}")

    def _session(self, p: Principal, session_id: Any, address: str | None,
                 what: str) -> Session:
        self._require_exec(p, address, what)
        s = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if s is None or (s.user_id != p.sub and not p.is_admin):
            self._deny(p, address, s.client_id if s is not None else None,
                       "session_not_found",
                       f"{what} on session {str(session_id)[:80]!r}")
            raise ConsoleError("session_not_found", "there is no such session")
        self._require_client(p, s.client_id, address, what)
        return s

    def _deny(self, p: Principal, address: str | None, client_id: str | None, code: str,
              what: str) -> None:
        """Log and record a refused attempt (at most DENIED_RECORDS_PER_MINUTE per user)."""
        self.denied += 1
        log.warning("console: %s refused for %s (%s) from %s: %s", what, p.sub, p.role,
                    address, code)
        now = self.wall_clock()
        start, n = self._denied.get(p.sub, (now, 0))
        if now - start >= 60:
            start, n = now, 0
        self._denied[p.sub] = (start, n + 1)
        if n >= DENIED_RECORDS_PER_MINUTE:
            return
        self.audit.begin(AuditRecord(ref=secrets.token_urlsafe(12), kind="denied", at=now,
                                     user_id=p.sub, role=p.role, address=address,
                                     client_id=client_id, status=code, detail=what[:500]))

    # -- actions -------------------------------------------------------------------------------

    async def open(self, p: Principal, client_id: Any, *, address: str | None) -> dict[str, Any]:
        """A new session to ``client_id``; returns TERMINAL_CONNECTED's data."""
        self._require_exec(p, address, "terminal.open", client_id if isinstance(client_id, str)
                           else None)
        if not isinstance(client_id, str) or not client_id:
            raise ConsoleError("invalid_field", "terminal.open needs a clientId: a string")
        self._require_client(p, client_id, address, "terminal.open")
        cfg = self.config()
        mine = self.by_user.setdefault(p.sub, set())
        if len(mine) >= cfg.max_sessions_per_user:
            self._deny(p, address, client_id, "too_many_sessions", "terminal.open")
            raise ConsoleError("too_many_sessions",
                               f"at most {cfg.max_sessions_per_user} console sessions per user; "
                               "close one first")
        port = self.commands.directory.port(client_id)
        if port is None:
            raise ConsoleError("agent_not_connected",
                               f"the agent of {client_id} has no control channel to rpad (it is "
                               "not running, or was not started with --allow-commands)")
        if not port.capabilities.get("commands"):
            raise ConsoleError("commands_disabled",
                               f"commands are disabled on {client_id}: its owner did not start "
                               "the agent with --allow-commands")
        now = self.wall_clock()
        s = Session(id=secrets.token_urlsafe(18), user_id=p.sub, role=p.role,
                    client_id=client_id, address=address, opened_at=now, audience={p.sub},
                    history=collections.deque(maxlen=cfg.history_size), last_active=now)
        self.audit.begin(AuditRecord(ref=s.id, kind="session", at=now, user_id=p.sub,
                                     role=p.role, address=address, client_id=client_id,
                                     session_id=s.id, status="open"))
        await self._durable("open a console session")
        self.sessions[s.id] = s
        mine.add(s.id)
        log.info("console: %s (%s) from %s opened session %s to %s", p.sub, p.role, address,
                 s.id, client_id)
        return {"sessionId": s.id, "clientId": client_id,
                "capabilities": dict(port.capabilities), "running": None}

    async def command(self, p: Principal, session_id: Any, command: Any, *,
                      address: str | None, timeout_seconds: Any = None,
                      max_output_bytes: Any = None) -> None:
        s = self._session(p, session_id, address, "terminal.command")
        cfg = self.config()
        if not isinstance(command, str) or not command.strip():
            raise ConsoleError("invalid_field", "terminal.command needs a command: a non-empty "
                               "string")
        if len(command) > MAX_COMMAND_CHARS or "\x00" in command:
            raise ConsoleError("invalid_field", f"the command must be at most "
                               f"{MAX_COMMAND_CHARS} characters, without NUL")
        timeout = _number(timeout_seconds, "timeoutSeconds", cfg.command_timeout_seconds,
                          cfg.max_command_timeout_seconds)
        limit = int(_number(max_output_bytes, "maxOutputBytes", cfg.max_output_bytes,
                            cfg.max_output_bytes))
        if s.running is not None:
            raise ConsoleError("busy", "a command is running in this session; cancel it or wait")
        now = self.wall_clock()
        command_id = secrets.token_urlsafe(12)
        self.audit.begin(AuditRecord(ref=command_id, kind="command", at=now, user_id=p.sub,
                                     role=p.role, address=address, client_id=s.client_id,
                                     session_id=s.id, command=command, status="requested"))
        await self._durable("run a command")
        if s.closed or s.running is not None:  # closed, or raced by another tab meanwhile
            self.audit.end(command_id, at=self.wall_clock(), status="not_run",
                           detail="the session closed or ran another command meanwhile")
            raise ConsoleError("busy", "a command is running in this session; cancel it or wait")
        try:
            cmd = self.commands.start(s.client_id, command, timeout_seconds=timeout,
                                      max_output_bytes=limit, sink=_SessionSink(self, s),
                                      auto_credit=False, command_id=command_id)
        except Unavailable as exc:
            self.audit.end(command_id, at=self.wall_clock(), status="not_run", detail=exc.code)
            raise ConsoleError(exc.code, exc.message) from None
        s.running = cmd
        s.entry = Entry(command_id, command, now)
        s.last_active = now
        log.info("console: %s (%s) from %s runs on %s [%s]: %s", p.sub, p.role, address,
                 s.client_id, command_id, command)

    def ack(self, p: Principal, session_id: Any, command_id: Any, shown: Any, *,
            address: str | None) -> None:
        """The page has shown ``shown`` bytes of the command's output in all (cumulative, so
        a lost or repeated acknowledgement does no harm)."""
        s = self._session(p, session_id, address, "terminal.ack")
        if isinstance(shown, bool) or not isinstance(shown, int) or shown < 0:
            raise ConsoleError("invalid_field",
                               "terminal.ack needs shownBytes: a non-negative integer")
        if s.running is not None and s.running.id == command_id:
            self.commands.ack(s.running, shown - s.running.acked)

    def cancel(self, p: Principal, session_id: Any, *, address: str | None) -> None:
        s = self._session(p, session_id, address, "terminal.cancel")
        if s.running is None:
            raise ConsoleError("not_running", "no command is running in this session")
        log.info("console: %s (%s) from %s cancels %s on %s", p.sub, p.role, address,
                 s.running.id, s.client_id)
        self.commands.cancel(s.running, "cancel")

    def history(self, p: Principal, session_id: Any, *, address: str | None) -> dict[str, Any]:
        s = self._session(p, session_id, address, "terminal.history")
        entries = list(s.history) + ([s.entry] if s.entry is not None else [])
        return {"sessionId": s.id, "clientId": s.client_id,
                "commands": [e.to_json() for e in entries]}

    def attach(self, p: Principal, session_id: Any, *, address: str | None) -> dict[str, Any]:
        s = self._session(p, session_id, address, "terminal.attach")
        if p.sub not in s.audience:
            log.info("console: %s (%s) from %s attached to session %s of %s", p.sub, p.role,
                     address, s.id, s.user_id)
            s.audience.add(p.sub)
        port = self.commands.directory.port(s.client_id)
        return {"sessionId": s.id, "clientId": s.client_id, "attached": True,
                "capabilities": dict(port.capabilities) if port is not None else None,
                "running": s.running.id if s.running is not None else None}

    def list_sessions(self, p: Principal, *, address: str | None) -> dict[str, Any]:
        self._require_exec(p, address, "terminal.list")
        mine = [self.sessions[i] for i in sorted(self.by_user.get(p.sub, ()))]
        return {"sessions": [s.summary() for s in mine]}

    async def close(self, p: Principal, session_id: Any, *, address: str | None) -> None:
        s = self._session(p, session_id, address, "terminal.close")
        await self.end_session(s, "closed", by=p.sub)

    # -- ending ----------------------------------------------------------------------------------

    async def end_session(self, s: Session, reason: str, *, by: str | None = None) -> None:
        if s.closed:
            return
        s.closed = True
        if s.running is not None:
            self.commands.cancel(s.running, "close")
        self.sessions.pop(s.id, None)
        mine = self.by_user.get(s.user_id)
        if mine is not None:
            mine.discard(s.id)
            if not mine:
                del self.by_user[s.user_id]
        self.audit.end(s.id, at=self.wall_clock(), status="closed",
                       detail=reason if by is None else f"{reason} by {by}")
        log.info("console: session %s of %s to %s closed (%s)", s.id, s.user_id, s.client_id,
                 reason)
        await self.tell(s, TERMINAL_CLOSED, {"sessionId": s.id, "reason": reason})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Close detached and idle sessions, every SWEEP_INTERVAL_SECONDS."""
        task_status.started()
        next_prune = trio.current_time()
        try:
            while True:
                if trio.current_time() >= next_prune:
                    next_prune += PRUNE_INTERVAL_SECONDS
                    self.audit.prune(self.wall_clock() - self.config().retention_days * 86400)
                await trio.sleep(SWEEP_INTERVAL_SECONDS)
                await self.sweep()
        finally:
            self.stopping()

    def stopping(self) -> None:
        """rpad is stopping: every session ends (recorded; the agents kill the commands when
        their channels close)."""
        now = self.wall_clock()
        for s in list(self.sessions.values()):
            s.closed = True
            if s.running is not None:
                self.commands.cancel(s.running, "rpad is stopping")
            self.audit.end(s.id, at=now, status="closed", detail="rpad stopped")
        self.sessions.clear()
        self.by_user.clear()

    async def sweep(self) -> None:
        now = self.wall_clock()
        cfg = self.config()
        for s in list(self.sessions.values()):
            if any(self.user_connected(u) for u in s.audience):
                s.detached_since = None
            elif s.detached_since is None:
                s.detached_since = now
            if s.detached_since is not None and now - s.detached_since >= cfg.detach_grace_seconds:
                await self.end_session(s, "detached")
            elif s.running is None and now - s.last_active >= cfg.idle_timeout_seconds:
                await self.end_session(s, "idle")

    # -- helpers -------------------------------------------------------------------------------

    async def _durable(self, what: str) -> None:
        try:
            await self.audit.durable()
        except StorageUnavailable:
            raise ConsoleError("storage_unavailable",
                               f"rpad cannot write its audit log right now, so it will not "
                               f"{what}; try again later") from None

    async def tell(self, s: Session, type_: str, data: dict[str, Any]) -> None:
        text = dumps(data)
        for user in list(s.audience):
            await self.broker.send_to_user(user, type_, text)


def _number(value: Any, field: str, default: float, maximum: float) -> float:
    if value is None:
        return min(default, maximum)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConsoleError("invalid_field", f"{field} must be a positive number")
    return float(min(value, maximum))


class _SessionSink:
    """A session's side of one command (:class:`~rpad.service.commands.CommandSink`)."""

    def __init__(self, console: Console, s: Session) -> None:
        self.console = console
        self.s = s

    async def started(self, cmd: Command) -> None:
        await self.console.tell(self.s, COMMAND_START, {
            "sessionId": self.s.id, "commandId": cmd.id, "command": cmd.command,
            "startedAt": iso(cmd.started_at), "timeoutSeconds": cmd.timeout_seconds,
            "maxOutputBytes": cmd.max_output_bytes})

    async def output(self, cmd: Command, stream: str, chunk: str, nbytes: int) -> None:
        if self.s.entry is not None:
            self.s.entry.keep(stream, chunk)
        await self.console.tell(self.s, COMMAND_OUTPUT, {
            "sessionId": self.s.id, "commandId": cmd.id, "chunk": chunk, "stream": stream,
            "bytes": nbytes})

    def _finish(self, cmd: Command, status: str, result: dict[str, Any] | None,
                detail: str | None) -> None:
        s, now = self.s, self.console.wall_clock()
        e = s.entry
        if e is not None and e.command_id == cmd.id:
            e.ended_at, e.status, e.result = now, status, result
            s.history.append(e)
            s.entry = None
        if s.running is cmd:
            s.running = None
        s.last_active = now
        r = result or {}
        self.console.audit.end(cmd.id, at=now, status=status, exit_code=r.get("exitCode"),
                               output_bytes=cmd.received, truncated=r.get("truncated"),
                               detail=detail)

    async def done(self, cmd: Command, result: dict[str, Any]) -> None:
        self._finish(cmd, result["status"], result, None)
        log.info("console: command %s on %s: %s (exit %s, %d bytes)", cmd.id, cmd.client_id,
                 result["status"], result["exitCode"], cmd.received)
        await self.console.tell(self.s, COMMAND_DONE, {
            "sessionId": self.s.id, "commandId": cmd.id, "command": cmd.command, **result})

    async def refused(self, cmd: Command, code: str, message: str) -> None:
        self._finish(cmd, "refused", None, code)
        log.info("console: the agent of %s refused command %s: %s", cmd.client_id, cmd.id, code)
        await self.console.tell(self.s, TERMINAL_ERROR, {
            "sessionId": self.s.id, "commandId": cmd.id, "code": code, "message": message})

    async def lost(self, cmd: Command, code: str, message: str) -> None:
        self._finish(cmd, "lost", None, code)
        await self.console.tell(self.s, TERMINAL_ERROR, {
            "sessionId": self.s.id, "commandId": cmd.id, "code": code, "message": message})
