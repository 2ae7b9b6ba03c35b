"""The agent's control channel: an outbound WebSocket to rpad's hub that carries console
commands to this host (and nothing else), when the host's owner allows them.

The agent dials out (the host opens no port, so it works behind NAT) to ``/api/v1/agent/ws``
on rpad's hub with its agent token in an ``Authorization`` header. The URL is ``--control-url``,
or found from ``--url``: ``GET /api/v1/dashboard-config`` names the hub (``wsUrl``), and the
channel uses that scheme, host and port. It reconnects with backoff (1 s doubling to 30 s,
jitter) after any loss, and every 300 s after a refused token.

The protocol (version 1). The hub's usual frames: the agent sends actions
``{"action": ..., ...}``, rpad sends envelopes ``{"type", "topic": null, "seq": null, "ts",
"data"}``:

- rpad: ``CONNECTION_ESTABLISHED`` (as on every hub connection); agent: ``agent.hello
  {protocol, agentVersion, capabilities}``; rpad: ``AGENT_REGISTERED {clientId, protocol,
  maxMessageBytes}``. ``capabilities`` is :meth:`CommandPolicy.capabilities`: whether commands
  run at all, the allowlist, the run-as user, the limits; rpad shows them and refuses early, but
  this host decides.
- rpad: ``COMMAND_RUN {commandId, command, timeoutSeconds?, maxOutputBytes?, creditBytes}``;
  agent: ``command.started {commandId}`` or ``command.refused {commandId, code, message}``
  (``commands_disabled``, ``not_allowed``, ``invalid_command``, ``busy``, ``duplicate``).
- agent: ``command.output {commandId, stream, chunk, bytes}``, never more ``bytes`` (raw
  output, before decoding) in total than rpad has granted: ``creditBytes`` at the start, plus
  every rpad ``COMMAND_CREDIT {commandId, bytes}``. rpad grants as the console acknowledges what
  it has shown, so output moves at the pace of the slowest link and nobody buffers more than a
  window.
- rpad: ``COMMAND_CANCEL {commandId, reason}``: SIGINT to the command's process group, SIGKILL
  after the owner's grace.
- agent: ``command.done {commandId, exitCode, signal, status, durationMs, truncated,
  outputBytes}``, ``status`` one of ``success``, ``error``, ``timeout``, ``cancelled``.

Unknown message types are ignored (a newer rpad may send more); malformed ones are logged and
dropped. When the channel is lost, every command it started is killed (its process group, at
once): nobody is left to see its output or cancel it.

Resource handling: one connection at a time; its commands run in a nursery that lives as long
as the connection. A keepalive ping every ``ping_interval_seconds`` detects a dead rpad that
never closed the TCP connection.

Error handling: connection problems are retried (never raised); a message that cannot be
handled is answered with a refusal or dropped with a warning; the connection stays up.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio
from trio_websocket import WebSocketConnection

from .. import __version__
from . import httpclient, wsclient
from . import policy as policy_mod
from .backoff import Backoff
from .policy import CommandRefused
from .runner import CHUNK_BYTES, Execution, Runner

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
CONTROL_PATH = "/api/v1/agent/ws"
CONFIG_PATH = "/api/v1/dashboard-config"
PING_INTERVAL_SECONDS = 30.0
PONG_TIMEOUT_SECONDS = 30.0
# How long rpad has to confirm the connection and the hello.
REGISTER_TIMEOUT_SECONDS = 15.0
REFUSED_RETRY_SECONDS = 300.0
# Close codes: another channel of the same client id replaced this one; rpad does not know the
# client (yet).
CLOSE_REPLACED = 4012
DISCOVERY_TIMEOUT_SECONDS = 10.0
# Frames rpad sends are small; a bigger one is a confused or hostile server.
MAX_MESSAGE_BYTES = 64 * 1024
# The hub's frame limit is 64 KiB by default; a chunk of raw output may grow 6 times when
# JSON escapes control characters, so it is sized from the limit rpad announces.
ENVELOPE_BYTES = 512
MIN_CHUNK_BYTES = 256
COMMAND_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
DUPLICATE = "duplicate"

Discover = Callable[..., Awaitable[httpclient.HttpResponse]]


class _Unregistered(Exception):
    """rpad did not complete the hello in time."""


def control_url_from(ws_url: str) -> str:
    """The control channel's URL on the hub that ``ws_url`` (the dashboard's) names."""
    parts = urlsplit(ws_url)
    if parts.scheme not in httpclient.WS_SCHEMES or not parts.netloc:
        raise ValueError(f"rpad's dashboard-config names no usable hub URL: {ws_url!r}")
    return urlunsplit((parts.scheme, parts.netloc, CONTROL_PATH, "", ""))


def chunk_bytes_for(max_message_bytes: int) -> int:
    return max(MIN_CHUNK_BYTES, min(CHUNK_BYTES, (max_message_bytes - ENVELOPE_BYTES) // 6))


def _int_field(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _seconds_field(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


class ControlChannel:
    """Keeps the control channel up and runs what arrives on it through ``runner``."""

    def __init__(self, runner: Runner, *, token: str, agent_version: str,
                 control_url: str | None = None, http_url: str | None = None,
                 backoff: Backoff | None = None,
                 ping_interval_seconds: float = PING_INTERVAL_SECONDS,
                 connect_timeout_seconds: float = wsclient.CONNECT_TIMEOUT_SECONDS,
                 discover: Discover = httpclient.request) -> None:
        if control_url is None and http_url is None:
            raise ValueError("the control channel needs --control-url or --url")
        self.runner = runner
        self.token = token
        self.agent_version = agent_version
        self.control_url = control_url
        self.http_url = http_url
        self.backoff = backoff or Backoff()
        self.ping_interval_seconds = ping_interval_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.discover = discover
        self.chunk_bytes = CHUNK_BYTES
        self.registered = trio.Event()  # set while a registered connection is up
        self.connections = 0
        self.refusals = 0

    async def run(self, ready: trio.Event | None = None) -> None:
        """Stay connected until cancelled (from when ``ready`` is set: the agent's first
        accepted heartbeat, so that rpad knows the client)."""
        if ready is not None:
            await ready.wait()
        while True:
            try:
                url = self.control_url or await self._discover()
                async with wsclient.connect(
                        url, self.token, max_message_bytes=MAX_MESSAGE_BYTES,
                        connect_timeout_seconds=self.connect_timeout_seconds,
                        user_agent=f"rpad-agent/{__version__} (control channel)") as ws:
                    await self._session(ws, url)
                delay = self.backoff.next_delay()
                why = "the connection ended"
            except wsclient.Refused as exc:
                self.refusals += 1
                delay = REFUSED_RETRY_SECONDS
                log.error("rpad refused the control channel's token (%s); commands cannot "
                          "reach this host; retrying in %g s", exc, delay)
                why = ""
            except (wsclient.Lost, _Unregistered) as exc:
                delay = self.backoff.next_delay()
                why = str(exc)
                if isinstance(exc, wsclient.Lost) and exc.status == 404:
                    why += ": this rpad has no control channel endpoint (too old?)"
                if isinstance(exc, wsclient.Lost) and exc.code == CLOSE_REPLACED:
                    # Two agents with the same client id would take turns otherwise.
                    delay = REFUSED_RETRY_SECONDS
                    why = ("another agent with this client id opened a control channel (is it "
                           "running twice?)")
            finally:
                if self.registered.is_set():
                    self.registered = trio.Event()
            if why:
                log.warning("control channel: %s; reconnecting in %.1f s", why, delay)
            await trio.sleep(delay)

    async def _discover(self) -> str:
        assert self.http_url is not None
        url = self.http_url.rstrip("/") + CONFIG_PATH
        try:
            resp = await self.discover("GET", url, timeout_seconds=DISCOVERY_TIMEOUT_SECONDS)
        except httpclient.HttpError as exc:
            raise wsclient.Lost(f"cannot ask rpad where its hub is: {exc}") from None
        body = resp.json()
        if resp.status != 200 or not isinstance(body, dict) or not isinstance(
                body.get("wsUrl"), str):
            raise wsclient.Lost(f"cannot ask rpad where its hub is: {url} answered "
                                f"HTTP {resp.status}")
        try:
            return control_url_from(body["wsUrl"])
        except ValueError as exc:
            raise wsclient.Lost(str(exc)) from None

    async def _session(self, ws: WebSocketConnection, url: str) -> None:
        """One connection: hello, then serve rpad's messages until it ends."""
        await self._register(ws)
        self.connections += 1
        self.backoff.reset()
        self.registered.set()
        log.info("control channel to %s is up (commands %s)", url,
                 "allowed" if self.runner.policy.enabled else "disabled on this host")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keepalive, ws)
                while True:
                    msg = wsclient.parse_message(await ws.get_message(), "control channel")
                    if msg is not None:
                        await self.handle(ws, nursery, msg)
        finally:
            running = len(self.runner.running)
            if running:
                log.warning("control channel lost: killed %d running command(s)", running)

    async def _register(self, ws: WebSocketConnection) -> None:
        hello = {"action": "agent.hello", "protocol": PROTOCOL_VERSION,
                 "agentVersion": self.agent_version,
                 "capabilities": self.runner.policy.capabilities()}
        with trio.move_on_after(REGISTER_TIMEOUT_SECONDS):
            sent = False
            while True:
                msg = wsclient.parse_message(await ws.get_message(), "control channel")
                if msg is None:
                    continue
                type_, data = msg.get("type"), msg.get("data")
                data = data if isinstance(data, dict) else {}
                if type_ == "CONNECTION_ESTABLISHED" and not sent:
                    await ws.send_message(json.dumps(hello))
                    sent = True
                elif type_ == "AGENT_REGISTERED":
                    limit = _int_field(data, "maxMessageBytes")
                    if limit:
                        self.chunk_bytes = chunk_bytes_for(limit)
                    return
                elif type_ == "ERROR":
                    raise _Unregistered(f"rpad refused the hello: {data.get('code')}: "
                                        f"{data.get('message')}")
        raise _Unregistered("rpad did not confirm the control channel in time")

    async def _keepalive(self, ws: WebSocketConnection) -> None:
        while True:
            await trio.sleep(self.ping_interval_seconds)
            with trio.move_on_after(PONG_TIMEOUT_SECONDS) as scope:
                await ws.ping()
            if scope.cancelled_caught:
                raise wsclient.Lost(f"no pong from rpad within {PONG_TIMEOUT_SECONDS:g} s")

    async def handle(self, ws: WebSocketConnection, nursery: trio.Nursery,
                     msg: dict[str, Any]) -> None:
        type_ = msg.get("type")
        data = msg.get("data")
        if not isinstance(data, dict):
            data = {}
        if type_ == "ERROR":
            log.warning("rpad: %s: %s", data.get("code"), data.get("message"))
            return
        if type_ not in ("COMMAND_RUN", "COMMAND_CREDIT", "COMMAND_CANCEL"):
            return
        command_id = data.get("commandId")
        if not isinstance(command_id, str) or not COMMAND_ID_RE.fullmatch(command_id):
            log.warning("rpad sent %s without a valid commandId: dropped", type_)
            return
        if type_ == "COMMAND_RUN":
            await self._start(ws, nursery, command_id, data)
            return
        ex = self.runner.running.get(command_id)
        if ex is None:
            return  # it ended meanwhile
        if type_ == "COMMAND_CREDIT":
            nbytes = _int_field(data, "bytes")
            if nbytes:
                ex.grant(nbytes)
        else:
            reason = data.get("reason")
            ex.cancel(reason if isinstance(reason, str) and reason else "cancel")

    async def _start(self, ws: WebSocketConnection, nursery: trio.Nursery, command_id: str,
                     data: dict[str, Any]) -> None:
        command = data.get("command")
        try:
            if command_id in self.runner.running:
                raise CommandRefused(DUPLICATE, f"command {command_id} is already running")
            if not isinstance(command, str):
                raise CommandRefused("invalid_command", "the command must be a string")
            ex = self.runner.admit(
                command_id, command, timeout_seconds=_seconds_field(data, "timeoutSeconds"),
                max_output_bytes=_int_field(data, "maxOutputBytes") or None,
                credit_bytes=_int_field(data, "creditBytes") or 0,
                chunk_bytes=self.chunk_bytes)
        except CommandRefused as exc:
            log.info("refused command %s: %s", command_id, exc.message)
            await _send(ws, {"action": "command.refused", "commandId": command_id,
                             "code": exc.code, "message": exc.message})
            return
        log.info("running command %s (timeout %g s, output limit %d bytes)", command_id,
                 ex.timeout_seconds, ex.max_output_bytes)
        await _send(ws, {"action": "command.started", "commandId": command_id})
        nursery.start_soon(self._execute, ws, ex)

    async def _execute(self, ws: WebSocketConnection, ex: Execution) -> None:
        async def emit(stream: str, text: str, nbytes: int) -> None:
            await _send(ws, {"action": "command.output", "commandId": ex.command_id,
                             "stream": stream, "chunk": text, "bytes": nbytes})

        result = await ex.run(emit)
        log.info("command %s: %s (exit %s, %d bytes of output%s, %d ms)", ex.command_id,
                 result.status, result.exit_code if result.signal is None
                 else f"signal {result.signal}", result.output_bytes,
                 ", truncated" if result.truncated else "", result.duration_ms)
        await _send(ws, {"action": "command.done", "commandId": ex.command_id,
                         **result.to_json()})


async def _send(ws: WebSocketConnection, msg: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(msg, ensure_ascii=False, separators=(",", ":")))



# -- the agent's command line --------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``rpad agent``'s options for the control channel and commands."""
    g = p.add_argument_group(
        "commands from the console (off unless given here or in --config)")
    g.add_argument("--allow-commands", action="store_true",
                   help="run commands that rpad's console and tasks send (its users need an "
                        "admin token or an operator token whose exec claim covers this client)")
    g.add_argument("--allow-command", dest="allow_patterns", action="append", metavar="PATTERN",
                   help="allow only commands matching PATTERN, word by word (repeatable); with "
                        "an allowlist, commands run without a shell")
    g.add_argument("--run-as", metavar="USER",
                   help="run commands as this user (the agent must run as root)")
    g.add_argument("--allow-root", action="store_true",
                   help="allow commands to run as root (refused otherwise)")
    g.add_argument("--config", metavar="PATH",
                   help="the agent's own configuration file; its [commands] table may turn "
                        "commands on (it must not be writable by others)")
    g.add_argument("--control-channel", action="store_true",
                   help="keep the control channel open even without --allow-commands (rpad "
                        "then shows that this host refuses commands)")
    g.add_argument("--control-url", metavar="URL",
                   help="the hub's control channel, e.g. wss://HOST/api/v1/agent/ws (default: "
                        "found from --url)")


def from_args(args: argparse.Namespace, *, token: str, agent_version: str,
              http_url: str) -> ControlChannel | None:
    """The control channel the options ask for, or None. Raises ValueError (PolicyError is
    one) naming the bad option or key."""
    table = policy_mod.read_file(Path(args.config)) if args.config else None
    pol = policy_mod.build(allow_flag=args.allow_commands, patterns=args.allow_patterns or (),
                           run_as=args.run_as, allow_root_flag=args.allow_root,
                           file_table=table)
    if args.control_url is not None:
        httpclient.parse_url(args.control_url, httpclient.WS_SCHEMES)
    if not pol.enabled and not args.control_channel:
        if args.allow_patterns or args.run_as:
            log.warning("--allow-command and --run-as do nothing without --allow-commands")
        return None
    runner = Runner(pol, owner=args.client_id)
    if pol.enabled:
        runner.sweep_leftovers()
    return ControlChannel(runner, token=token, agent_version=agent_version,
                          control_url=args.control_url, http_url=http_url)
