"""``rpad watch``: follow the hub's events from a terminal or a script.

Connects to the WebSocket hub (SPEC §5) with the token in an ``Authorization`` header,
subscribes to the ``--topic``\\ s and prints every event envelope on stdout as one JSON object per
line (or, with ``--pretty``, one readable line: time, topic and seq, type, a summary).
Connection news (connected, subscribed, reconnecting) goes to stderr, so stdout stays a clean
stream of events for ``jq`` and friends.

When the connection drops it reconnects with exponential backoff (1 s doubling to 30 s, with
jitter) and resumes: within the same server epoch it subscribes with ``since`` = the last seq
seen on each topic, so missed events are replayed from the hub's history and none is printed
twice; after a restart of rpad (a new epoch) it starts afresh and says so.

Error handling: a refused token (HTTP 401/403 at the handshake, or close code 4001, 4003,
4009) ends the command with exit status 1 and the server's reason on stderr; so does giving up
after ``--max-attempts`` consecutive failed connections. Everything else is retried.

Resource handling: one connection at a time; a keepalive ping every ``--ping-interval``
seconds detects a dead server that never closed the TCP connection.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import trio
from trio_websocket import WebSocketConnection

from . import httpclient, wsclient
from .agent import add_token_arguments, read_token
from .backoff import Backoff

DEFAULT_TOPICS = ("client_status",)
CONNECT_TIMEOUT_SECONDS = 10.0
# How long to wait for CONNECTION_ESTABLISHED after the handshake.
ESTABLISH_TIMEOUT_SECONDS = 15.0
PING_INTERVAL_SECONDS = 30.0
PONG_TIMEOUT_SECONDS = 30.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CONTROL_TYPES = frozenset({"CONNECTION_ESTABLISHED", "SUBSCRIBED", "UNSUBSCRIBED", "PONG",
                           "ERROR"})
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


# The hub refused the token (retrying cannot help); the connection is gone or never came up
# (retry). The hub connection itself is wsclient's, shared with the agent's control channel.
TokenRefused = wsclient.Refused
_Lost = wsclient.Lost


class OutputClosed(Exception):
    """Nobody reads our stdout any more (``rpad watch | head``)."""


# -- output --------------------------------------------------------------------------------------


def _clock(ts: Any) -> str:
    """HH:MM:SS.mmm (UTC) of an envelope's ``ts`` (ISO string, epoch seconds or milliseconds);
    now if ``ts`` is missing or unreadable."""
    dt = datetime.now(UTC)
    try:
        if isinstance(ts, str):
            dt = datetime.fromisoformat(ts)
        elif isinstance(ts, int | float) and not isinstance(ts, bool):
            dt = datetime.fromtimestamp(ts / 1000 if ts > 1e11 else ts, UTC)
    except (ValueError, OverflowError, OSError):
        pass
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def _pct(used: Any, total: Any) -> str | None:
    if isinstance(used, int | float) and isinstance(total, int | float) and total > 0:
        return f"{100 * used / total:.0f}%"
    return None


def summary(msg: dict[str, Any]) -> str:
    """A short human description of one message's ``data``."""
    type_ = msg.get("type")
    data = msg.get("data")
    if not isinstance(data, dict):
        return json.dumps(data, ensure_ascii=False) if data is not None else ""
    if type_ in ("CLIENT_CONNECTED", "CLIENT_DISCONNECTED", "CLIENT_STATUS_UPDATE",
                 "CLIENT_REMOVED"):
        parts = [str(data.get("clientId")), str(data.get("status"))]
        if data.get("reason"):
            parts.append(f"({data['reason']})")
        for key, label in (("reportedStatus", "reported"), ("version", "version"),
                           ("ipAddress", "ip")):
            if data.get(key):
                parts.append(f"{label}={data[key]}")
        return " ".join(parts)
    if type_ == "HEARTBEAT_RECEIVED":
        parts = [str(data.get("clientId"))]
        if data.get("reportedStatus"):
            parts.append(str(data["reportedStatus"]))
        m = data.get("latestMetrics") or {}
        if isinstance(m.get("cpuUsagePercent"), int | float):
            parts.append(f"cpu={m['cpuUsagePercent']:.0f}%")
        mem = _pct(m.get("memoryUsageBytes"), m.get("memoryTotalBytes"))
        if mem:
            parts.append(f"mem={mem}")
        return " ".join(parts)
    if type_ == "SERVER_LIST":
        servers = data.get("servers") or []
        online = sum(1 for s in servers if isinstance(s, dict) and s.get("status") == "online")
        return f"{len(servers)} clients, {online} online"
    if type_ == "NOTIFICATION":
        return f"[{data.get('level', 'info')}] {data.get('title', '')}: {data.get('message', '')}"
    if type_ == "SYSTEM_MESSAGE" and "message" in data:
        return str(data["message"])
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def format_pretty(msg: dict[str, Any]) -> str:
    topic = msg.get("topic") or "direct"
    seq = msg.get("seq")
    where = f"{topic}#{seq}" if seq is not None else topic
    return f"{_clock(msg.get('ts'))}  {where:<20} {msg.get('type', '?'):<22} {summary(msg)}"


def format_line(msg: dict[str, Any], pretty: bool) -> str:
    if pretty:
        return format_pretty(msg)
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":"))


# -- the watcher ---------------------------------------------------------------------------------


class Watcher:
    """Follows topics across reconnections; the state that survives them lives here."""

    def __init__(self, url: str, token: str, topics: list[str], *, out: TextIO,
                 err: TextIO | None = None, pretty: bool = False,
                 backoff: Backoff | None = None, max_attempts: int = 0,
                 ping_interval_seconds: float = PING_INTERVAL_SECONDS,
                 connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS) -> None:
        self.url = url
        self.token = token
        self.topics = list(dict.fromkeys(topics))
        self.out = out
        self.err = err if err is not None else sys.stderr
        self.pretty = pretty
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts
        self.ping_interval_seconds = ping_interval_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.epoch: str | None = None
        self.last_seq: dict[str, int] = {}
        self.printed = 0
        self.connections = 0
        # Trio times of each connection attempt (for tests and --verbose diagnostics).
        self.attempt_times: list[float] = []
        self._established = False

    def note(self, text: str) -> None:
        print(f"rpad watch: {text}", file=self.err, flush=True)

    async def run(self) -> int:
        """Watch until cancelled; returns the exit status when it has to give up."""
        failures = 0
        while True:
            self.attempt_times.append(trio.current_time())
            try:
                await self.session()
            except TokenRefused as exc:
                self.note(f"the server refused the token: {exc}")
                return EXIT_FAILURE
            except OutputClosed:
                return EXIT_OK
            except _Lost as exc:
                why = str(exc)
            if self._established:
                failures = 0
                self.backoff.reset()
            failures += 1
            if self.max_attempts and failures >= self.max_attempts:
                self.note(f"giving up after {failures} failed attempts: {why}")
                return EXIT_FAILURE
            delay = self.backoff.next_delay()
            self.note(f"{why}; reconnecting in {delay:.1f} s")
            await trio.sleep(delay)

    async def session(self) -> None:
        """One connection, from TCP connect to loss (:func:`wsclient.connect`: the stream
        is opened and closed there, and the library's errors come out as Refused or Lost).
        Raises _Lost, TokenRefused or OutputClosed."""
        self._established = False
        async with (
            wsclient.connect(self.url, self.token, max_message_bytes=MAX_MESSAGE_BYTES,
                             connect_timeout_seconds=self.connect_timeout_seconds) as ws,
            trio.open_nursery() as nursery,
        ):
            await self._converse(ws, nursery)

    async def _converse(self, ws: WebSocketConnection, nursery: trio.Nursery) -> None:
        """Wait for CONNECTION_ESTABLISHED, subscribe, then print until the connection ends
        (by an exception: ConnectionClosed, _Lost from the keepalive, OutputClosed)."""
        established: dict[str, Any] | None = None
        with trio.move_on_after(ESTABLISH_TIMEOUT_SECONDS):
            while established is None:
                msg = wsclient.parse_message(await ws.get_message(), "rpad watch")
                if msg is None:
                    continue
                if msg.get("type") == "CONNECTION_ESTABLISHED":
                    established = msg
                elif msg.get("type") == "ERROR":
                    self._error(msg)
        if established is None:
            raise _Lost("the hub did not confirm the connection")
        self._established = True
        self.connections += 1
        data = established.get("data") or {}
        epoch = data.get("epoch")
        if self.epoch is not None and epoch != self.epoch:
            self.note("rpad restarted (new epoch): starting afresh")
            self.last_seq.clear()
        self.epoch = epoch
        self.note(f"connected to {self.url} as {data.get('userId')} ({data.get('role')})")
        for topic in self.topics:
            sub: dict[str, Any] = {"action": "subscribe", "topic": topic}
            if topic in self.last_seq:
                sub["since"] = self.last_seq[topic]
            await ws.send_message(json.dumps(sub))
        nursery.start_soon(self._keepalive, ws)
        while True:
            msg = wsclient.parse_message(await ws.get_message(), "rpad watch")
            if msg is not None:
                self.handle(msg)

    async def _keepalive(self, ws: WebSocketConnection) -> None:
        while True:
            await trio.sleep(self.ping_interval_seconds)
            with trio.move_on_after(PONG_TIMEOUT_SECONDS) as scope:
                await ws.ping()
            if scope.cancelled_caught:
                raise _Lost(f"no pong within {PONG_TIMEOUT_SECONDS:g} s")

    def _error(self, msg: dict[str, Any]) -> None:
        data = msg.get("data") or {}
        self.note(f"error from the hub: {data.get('code')}: {data.get('message')}")

    def handle(self, msg: dict[str, Any]) -> None:
        type_ = msg.get("type")
        data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
        assert isinstance(data, dict)
        if type_ == "SUBSCRIBED":
            topic, since = data.get("topic"), self.last_seq.get(str(data.get("topic")))
            if since is not None and data.get("recovered") is False:
                self.note(f"subscribed to {topic}; events after seq {since} are no longer in "
                          "the hub's history and were missed")
            else:
                self.note(f"subscribed to {topic}")
            return
        if type_ == "ERROR":
            self._error(msg)
            return
        if type_ in CONTROL_TYPES:
            return
        topic, seq = msg.get("topic"), msg.get("seq")
        if isinstance(topic, str) and isinstance(seq, int) and not isinstance(seq, bool):
            if seq <= self.last_seq.get(topic, -1):
                return  # already printed before a reconnection
            self.last_seq[topic] = seq
        try:
            print(format_line(msg, self.pretty), file=self.out, flush=True)
        except BrokenPipeError:
            raise OutputClosed from None
        self.printed += 1



# -- the command ---------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "watch", help="print the hub's events as JSON lines",
        description="Subscribe to topics on rpad's WebSocket hub and print every event; "
                    "reconnects with backoff and resumes with since.")
    p.add_argument("--url", required=True, help="the hub, e.g. ws://HOST:8001/ws")
    add_token_arguments(p)
    p.add_argument("--topic", dest="topics", action="extend", nargs="+", metavar="TOPIC",
                   help="topics to follow (repeatable; default client_status)")
    p.add_argument("--pretty", action="store_true", help="one readable line per event")
    p.add_argument("--max-attempts", type=int, default=0, metavar="N",
                   help="give up after N failed connections in a row (default 0: never)")
    p.set_defaults(func=cmd_watch)


def cmd_watch(args: argparse.Namespace) -> int:
    err = sys.stderr
    try:
        token = read_token(args.token, args.token_file)
        if not args.url.startswith(("ws://", "wss://")):
            raise ValueError(f"--url must start with ws:// or wss://, got {args.url!r}")
        httpclient.parse_url(args.url, httpclient.WS_SCHEMES)
        if args.max_attempts < 0:
            raise ValueError("--max-attempts must not be negative")
    except ValueError as exc:
        print(f"rpad watch: {exc}", file=err)
        return EXIT_USAGE
    watcher = Watcher(args.url, token, args.topics or list(DEFAULT_TOPICS),
                      out=sys.stdout, err=err, pretty=args.pretty,
                      max_attempts=args.max_attempts)

    async def main() -> int:
        code = EXIT_OK
        async with trio.open_nursery() as nursery:

            async def on_signals() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

            async def watch() -> None:
                nonlocal code
                code = await watcher.run()
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signals)
            nursery.start_soon(watch)
        return code

    code = trio.run(main)
    if watcher.printed and not _stdout_alive():
        # `rpad watch | head`: keep Python from complaining when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


def _stdout_alive() -> bool:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return False
    return True
