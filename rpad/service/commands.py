"""Commands in flight between rpad and the agents: their ids, their credit, and the routing of
what the agents answer to whoever asked (a console session or a task).

rpad asks an agent to run a command with ``COMMAND_RUN`` on the agent's control channel and
grants it ``window_bytes`` of credit. The agent sends output only within its credit; rpad
grants more (``COMMAND_CREDIT``) as the consumer takes it: a console when the browser
acknowledges what it has shown (``terminal.ack``), a task at once (rpad keeps only a tail).
So at most one window per command is ever in flight between the agent and the consumer, and
a command printing gigabytes is paced by its slowest reader instead of filling memory.

Everything an agent sends is checked as coming from an untrusted host: a message about a
command that this agent was not asked to run, output beyond the credit granted, or a chunk
with more characters than the bytes it claims to be is a protocol violation, and the channel
is closed (its commands fail as lost).

Resource handling: memory only; a command is forgotten when it is done, refused or lost.
Error handling: :meth:`Commands.start` raises :class:`Unavailable` (with a code the console
shows) when the command cannot be sent; nothing else raises.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol

import attrs

log = logging.getLogger(__name__)

DEFAULT_WINDOW_BYTES = 256 * 1024
# A decoded chunk may hold a few replacement characters more than its raw bytes (the end of a
# stream that stopped inside a character).
CHUNK_SLACK_CHARS = 4
STREAMS = ("stdout", "stderr")
RESULT_STATUSES = ("success", "error", "timeout", "cancelled")

# Codes of Unavailable and of lost commands (shown in the console).
AGENT_NOT_CONNECTED = "agent_not_connected"
AGENT_DISCONNECTED = "agent_disconnected"
COMMANDS_DISABLED = "commands_disabled"


class Unavailable(Exception):
    """The command cannot be sent to the agent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AgentPort(Protocol):
    """One agent's control channel as the service sees it."""

    client_id: str
    capabilities: dict[str, Any]

    def send(self, type_: str, data: dict[str, Any]) -> bool:
        """Queue a message to the agent without waiting; False if the channel is gone."""
        ...

    def violation(self, why: str) -> None:
        """The agent broke the protocol: close its channel."""
        ...


class AgentDirectory(Protocol):
    """The control channels of the agents (on this node)."""

    def port(self, client_id: str) -> AgentPort | None: ...


class CommandSink(Protocol):
    """Who consumes a command's events."""

    async def started(self, cmd: Command) -> None: ...

    async def refused(self, cmd: Command, code: str, message: str) -> None: ...

    async def output(self, cmd: Command, stream: str, chunk: str, nbytes: int) -> None: ...

    async def done(self, cmd: Command, result: dict[str, Any]) -> None: ...

    async def lost(self, cmd: Command, code: str, message: str) -> None: ...


@attrs.define(eq=False)
class Command:
    id: str
    client_id: str
    command: str
    port: AgentPort
    sink: CommandSink
    timeout_seconds: float
    max_output_bytes: int
    requested_at: float
    auto_credit: bool
    window: int
    started_at: float | None = None
    # Raw bytes of output received, acknowledged by the consumer, and granted to the agent.
    received: int = 0
    acked: int = 0
    granted: int = 0
    cancel_reason: str | None = None


class Commands:
    def __init__(self, directory: AgentDirectory, *, wall_clock: Callable[[], float],
                 window_bytes: Callable[[], int] = lambda: DEFAULT_WINDOW_BYTES) -> None:
        self.directory = directory
        self.wall_clock = wall_clock
        self.window_bytes = window_bytes
        self.active: dict[str, Command] = {}
        self.violations = 0

    def start(self, client_id: str, command: str, *, timeout_seconds: float,
              max_output_bytes: int, sink: CommandSink, auto_credit: bool,
              command_id: str | None = None) -> Command:
        """Send ``command`` to the client's agent. Raises Unavailable."""
        port = self.directory.port(client_id)
        if port is None:
            raise Unavailable(AGENT_NOT_CONNECTED,
                              f"the agent of {client_id} has no control channel to rpad (it is "
                              "not running, or was not started with --allow-commands)")
        if not port.capabilities.get("commands"):
            raise Unavailable(COMMANDS_DISABLED,
                              f"commands are disabled on {client_id}: its owner did not start "
                              "the agent with --allow-commands")
        window = max(1024, self.window_bytes())
        cmd = Command(id=command_id or secrets.token_urlsafe(12), client_id=client_id,
                      command=command, port=port, sink=sink, timeout_seconds=timeout_seconds,
                      max_output_bytes=max_output_bytes, requested_at=self.wall_clock(),
                      auto_credit=auto_credit, window=window, granted=window)
        if not port.send("COMMAND_RUN", {"commandId": cmd.id, "command": command,
                                         "timeoutSeconds": timeout_seconds,
                                         "maxOutputBytes": max_output_bytes,
                                         "creditBytes": window}):
            raise Unavailable(AGENT_NOT_CONNECTED,
                              f"the control channel of {client_id} is closing")
        self.active[cmd.id] = cmd
        return cmd

    def ack(self, cmd: Command, nbytes: int) -> None:
        """The consumer has taken ``nbytes`` more of the output: keep one window granted."""
        nbytes = max(0, min(nbytes, cmd.received - cmd.acked))
        cmd.acked += nbytes
        more = cmd.acked + cmd.window - cmd.granted
        if more >= cmd.window // 4 and cmd.id in self.active:
            cmd.granted += more
            cmd.port.send("COMMAND_CREDIT", {"commandId": cmd.id, "bytes": more})

    def cancel(self, cmd: Command, reason: str = "cancel") -> None:
        """SIGINT to the command's process group, SIGKILL after the host's grace."""
        if cmd.id in self.active and cmd.cancel_reason is None:
            cmd.cancel_reason = reason
            cmd.port.send("COMMAND_CANCEL", {"commandId": cmd.id, "reason": reason})

    # -- what agents send ----------------------------------------------------------------------

    async def from_agent(self, port: AgentPort, action: str, data: dict[str, Any]) -> None:
        """One ``command.*`` message of an agent's channel."""
        command_id = data.get("commandId")
        cmd = self.active.get(command_id) if isinstance(command_id, str) else None
        if cmd is None or cmd.port is not port:
            if isinstance(command_id, str) and command_id in self.active:
                self._violation(port, f"{action} for a command it was not asked to run")
            # else: a command that ended on rpad's side meanwhile (lost, timed out): ignore
            return
        if action == "command.started":
            if cmd.started_at is None:
                cmd.started_at = self.wall_clock()
                await cmd.sink.started(cmd)
        elif action == "command.output":
            await self._output(cmd, data)
        elif action == "command.done":
            del self.active[cmd.id]
            await cmd.sink.done(cmd, _result(data, cmd))
        elif action == "command.refused":
            del self.active[cmd.id]
            code, message = data.get("code"), data.get("message")
            await cmd.sink.refused(cmd, code if isinstance(code, str) else "refused",
                                   str(message)[:500] if message is not None else "refused")

    async def _output(self, cmd: Command, data: dict[str, Any]) -> None:
        stream, chunk, nbytes = data.get("stream"), data.get("chunk"), data.get("bytes")
        if (stream not in STREAMS or not isinstance(chunk, str) or isinstance(nbytes, bool)
                or not isinstance(nbytes, int) or nbytes < 0):
            self._violation(cmd.port, "a malformed command.output")
            return
        if len(chunk) > nbytes + CHUNK_SLACK_CHARS:
            self._violation(cmd.port, "an output chunk longer than the bytes it claims")
            return
        if cmd.received + nbytes > cmd.granted:
            self._violation(cmd.port, f"output beyond its credit ({cmd.received + nbytes} > "
                                      f"{cmd.granted} bytes)")
            return
        cmd.received += nbytes
        await cmd.sink.output(cmd, stream, chunk, nbytes)
        if cmd.auto_credit:
            self.ack(cmd, nbytes)

    def _violation(self, port: AgentPort, why: str) -> None:
        self.violations += 1
        log.warning("agent %s broke the control protocol (%s): closing its channel",
                    port.client_id, why)
        port.violation(why)

    async def port_closed(self, port: AgentPort) -> None:
        """The agent's channel is gone: its commands are lost (the agent kills them)."""
        lost = [c for c in self.active.values() if c.port is port]
        for cmd in lost:
            del self.active[cmd.id]
        for cmd in lost:
            await cmd.sink.lost(cmd, AGENT_DISCONNECTED,
                                f"the control channel of {cmd.client_id} was lost while the "
                                "command ran; the agent kills what is left of it")

    async def forget(self, cmd: Command, code: str, message: str) -> None:
        """Give up on a command on rpad's side (it overran its time by far): cancel it on the
        agent and tell its sink it is lost."""
        if self.active.pop(cmd.id, None) is not None:
            cmd.port.send("COMMAND_CANCEL", {"commandId": cmd.id, "reason": "lost"})
            await cmd.sink.lost(cmd, code, message)


def _result(data: dict[str, Any], cmd: Command) -> dict[str, Any]:
    """The agent's ``command.done``, checked and normalised (never trusted as given)."""
    status = data.get("status")
    exit_code = data.get("exitCode")
    sig = data.get("signal")
    duration = data.get("durationMs")
    return {
        "status": status if status in RESULT_STATUSES else "error",
        "exitCode": exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool)
        else None,
        "signal": sig if isinstance(sig, int) and not isinstance(sig, bool) and sig > 0 else None,
        "durationMs": duration if isinstance(duration, int) and not isinstance(duration, bool)
        and duration >= 0 else None,
        "truncated": data.get("truncated") is True,
        # What rpad received, not what the agent says it sent.
        "outputBytes": cmd.received,
    }
