"""A small real WebSocket client for the hub tests: trio-websocket underneath, JSON on top.

``async with ws_connect(url, token=...) as ws`` opens a connection (the token in ``?token=``,
in an ``Authorization`` header, or sent as the first ``auth`` message) and waits for
``CONNECTION_ESTABLISHED`` unless told not to. ``ws_connect_stalled`` opens one that stops
reading after its first message and has a tiny socket receive buffer, so the server's writes
back up quickly: a dashboard that has stalled.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from rpad.api.wsschema import build_ws_schema
from rpad.config import Config

from .conftest import Running, start_daemon

STALLED_RCVBUF_BYTES = 4096

# Every message the hub sends in these tests must be one the shipped schema describes.
_WS_SCHEMA = build_ws_schema()
SERVER_MESSAGE = Draft202012Validator({"$defs": _WS_SCHEMA["$defs"],
                                       "$ref": "#/$defs/ServerMessage"})


def check_server_text(text: str | bytes) -> None:
    """A text frame from the hub: each message in it (one per line when batched) must be
    valid JSON that matches the WebSocket schema (rpad/api/wsschema.py), or the test fails
    naming the message and what did not match."""
    assert isinstance(text, str), f"the hub sent a binary frame: {text!r}"
    for line in text.split("\n"):
        msg = json.loads(line)
        error = best_match(SERVER_MESSAGE.iter_errors(msg))
        assert error is None, (f"the hub sent a message its schema does not describe: "
                               f"{line[:2000]}\n{error.message} at {list(error.absolute_path)}")

StartDaemon = Callable[..., Awaitable[Running]]


@pytest.fixture
async def daemons(nursery: trio.Nursery) -> AsyncIterator[StartDaemon]:
    """``await daemons(cfg, **daemon_kwargs)`` starts the real daemon in the test's nursery;
    every daemon started so is stopped (and its HTTP client closed) after the test."""
    started: list[Running] = []

    async def start(cfg: Config, **kwargs: object) -> Running:
        r = await start_daemon(nursery, cfg, **kwargs)
        started.append(r)
        return r

    yield start
    for r in started:
        await r.http.aclose()
        r.daemon.stop()


class Ws:
    def __init__(self, conn: WebSocketConnection) -> None:
        self.conn = conn
        self.established: dict[str, Any] = {}

    async def send(self, **fields: Any) -> None:
        await self.conn.send_message(json.dumps(fields))

    async def send_raw(self, text: str | bytes) -> None:
        await self.conn.send_message(text)

    async def recv(self) -> dict[str, Any]:
        raw = await self.conn.get_message()
        msg = json.loads(raw)
        assert isinstance(msg, dict)
        return msg

    async def expect(self, type_: str, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        """The next message, which must be of ``type_`` (messages of types in ``skip`` are
        passed over)."""
        while True:
            msg = await self.recv()
            if msg["type"] == type_:
                return msg
            assert msg["type"] in skip, f"expected {type_}, got {msg}"

    async def subscribe(self, topic: str, since: int | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = {"action": "subscribe", "topic": topic}
        if since is not None:
            fields["since"] = since
        await self.send(**fields)
        msg = await self.expect("SUBSCRIBED")
        assert msg["data"]["topic"] == topic
        return msg

    async def close_code(self) -> int:
        """Read until the connection closes; the close code."""
        try:
            while True:
                await self.conn.get_message()
        except ConnectionClosed as exc:
            assert exc.reason is not None
            return exc.reason.code

    async def messages_until_closed(self) -> tuple[list[dict[str, Any]], int]:
        out: list[dict[str, Any]] = []
        try:
            while True:
                out.append(json.loads(await self.conn.get_message()))
        except ConnectionClosed as exc:
            assert exc.reason is not None
            return out, exc.reason.code


def _url(base: str, path: str | None, token: str | None) -> str:
    url = base
    if path is not None:
        parts = urlsplit(base)
        url = f"{parts.scheme}://{parts.netloc}{path}"
    if token is not None:
        url += ("&" if "?" in url else "?") + "token=" + token
    return url


def _validate_received(conn: WebSocketConnection) -> None:
    """Every message this connection reads, however a test reads it (``Ws.recv`` or
    ``conn.get_message``), is checked against the schema first."""
    get_message = conn.get_message

    async def checked() -> str | bytes:
        text = await get_message()
        check_server_text(text)
        return text

    conn.get_message = checked  # type: ignore[method-assign]


@asynccontextmanager
async def _unwrap_rejection() -> AsyncIterator[None]:
    """A refused handshake surfaces from the connection's nursery as a group; raise the
    ConnectionRejected itself."""
    try:
        yield
    except BaseExceptionGroup as group:
        rejected, rest = group.split(ConnectionRejected)
        if rejected is not None and rest is None:
            raise rejected.exceptions[0] from None
        raise


@asynccontextmanager
async def _open(url: str, *, headers: list[tuple[bytes, bytes]], message_queue_size: int,
                rcvbuf: int | None = None, close_handshake: bool = True,
                ) -> AsyncIterator[WebSocketConnection]:
    """A client connection on a TCP stream this helper owns and closes: trio-websocket's
    client leaves its socket open when the server closes first (ResourceWarning). Without
    ``close_handshake`` the TCP connection is just dropped at the end: trio-websocket's client
    reader crashes (LocalProtocolError) when it finds a server ping still unread after the
    client has begun closing, which is what a stalled client has."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        await sock.connect((parts.hostname, parts.port))
    except BaseException:
        sock.close()
        raise
    stream = trio.SocketStream(sock)
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        async with _unwrap_rejection(), trio.open_nursery() as nursery:
            conn = await wrap_client_stream(
                nursery, stream, f"{parts.hostname}:{parts.port}", resource,
                extra_headers=headers, message_queue_size=message_queue_size,
                max_message_size=16 * 1024 * 1024)
            _validate_received(conn)
            try:
                yield conn
            finally:
                if close_handshake:
                    with trio.move_on_after(5):
                        await conn.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


@asynccontextmanager
async def ws_connect(
    base_url: str | None,
    *,
    token: str | None = None,
    header_token: str | None = None,
    auth_message: str | None = None,
    origin: str | None = None,
    path: str | None = None,
    established: bool = True,
    message_queue_size: int = 1024,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> AsyncIterator[Ws]:
    assert base_url is not None, "the daemon has no WebSocket URL"
    headers = list(extra_headers or [])
    if header_token is not None:
        headers.append((b"Authorization", f"Bearer {header_token}".encode()))
    if origin is not None:
        headers.append((b"Origin", origin.encode()))
    async with _open(_url(base_url, path, token), headers=headers,
                     message_queue_size=message_queue_size) as conn:
        ws = Ws(conn)
        if auth_message is not None:
            await ws.send(action="auth", token=auth_message)
        if established:
            ws.established = (await ws.expect("CONNECTION_ESTABLISHED"))["data"]
        yield ws


@asynccontextmanager
async def ws_connect_stalled(base_url: str | None, *, token: str) -> AsyncIterator[Ws]:
    """A connection whose reader stops after the first message it receives until the test
    calls ``recv`` (trio-websocket's queue of size 0), with a socket receive buffer of
    ``STALLED_RCVBUF_BYTES`` set before connecting, so the server's side backs up quickly."""
    assert base_url is not None, "the daemon has no WebSocket URL"
    async with _open(_url(base_url, None, token), headers=[], message_queue_size=0,
                     rcvbuf=STALLED_RCVBUF_BYTES, close_handshake=False) as conn:
        yield Ws(conn)


# With the autojump clock, a wait on a worker thread (SQLite) or a socket would jump the clock
# to the next deadline, however far. Tests on the fake clock therefore let it jump only after
# this much real idleness and keep a deadline ticking, so a jump is never longer than a tick.
AUTOJUMP_THRESHOLD_SECONDS = 0.01
TICK_SECONDS = 1.0


async def _tick() -> None:
    while True:
        await trio.sleep(TICK_SECONDS)


def fake_time(clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    """Make ``clock`` (the ``autojump_clock`` fixture) safe for tests against the daemon."""
    clock.autojump_threshold = AUTOJUMP_THRESHOLD_SECONDS
    nursery.start_soon(_tick)
