"""One outbound WebSocket connection to rpad's hub, for the programs that run on other hosts
(``rpad agent``'s control channel; ``rpad watch``).

:func:`connect` opens the TCP (or TLS) stream itself, performs the handshake with the token in
an ``Authorization`` header, and yields a ``trio_websocket.WebSocketConnection``; when the
block ends, for whatever reason, the stream is closed. Everything that ends a connection comes
out of it as one of two exceptions:

- :class:`Refused`: the hub refused the token (HTTP 401/403 at the handshake; close code 4001,
  4003 or 4009). Retrying with the same token will not help;
- :class:`Lost`: anything else (no route, no answer, a handshake the server abandoned, a close,
  a reset, a keepalive that got no pong); ``status`` is the HTTP status of a rejected
  handshake (404: this rpad has no such path), ``code`` the close code, if that was it.

Exceptions the caller's own block raises come out unchanged (without the nursery's group).

Resource handling: one TCP stream per :func:`connect`, closed on every path
(``aclose_forcefully``): trio-websocket's own ``open_websocket_url`` leaves the socket to the
garbage collector when the handshake fails or is cancelled. The library's reader task runs in a
nursery inside the block.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from . import httpclient

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0
REFUSED_CLOSE_CODES = {4001: "unauthorized", 4003: "forbidden", 4009: "token expired"}


class Refused(Exception):
    """The hub refused the token; retrying cannot help."""


class Lost(Exception):
    """The connection is gone or never came up; retrying may help."""

    def __init__(self, message: str, status: int | None = None,
                 code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class EofAwareStream(trio.abc.Stream):
    """A stream that tells when the peer has closed it (``eof``), so that a handshake the
    server abandons is noticed at once rather than at the connect timeout."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.eof = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self.inner.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.eof.set()
            raise
        if not data:
            self.eof.set()
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


def parse_message(text: str | bytes, who: str) -> dict[str, Any] | None:
    """A hub message as a JSON object; None (logged, naming ``who`` received it) for
    anything else."""
    try:
        msg = json.loads(text)
    except ValueError:
        log.warning("%s: ignoring a message that is not JSON", who)
        return None
    return msg if isinstance(msg, dict) else None


def _message_of(body: str) -> str:
    """An rpad error body's ``error: message``; any other body's first 200 characters."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200]
    if isinstance(data, dict) and "message" in data:
        return f"{data.get('error', '')}: {data['message']}".lstrip(": ")
    return body[:200]


def reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def _open_stream(url: str, t: httpclient.Target, timeout: float) -> trio.abc.Stream:
    try:
        with trio.fail_after(timeout):
            if t.secure:
                return await trio.open_ssl_over_tcp_stream(
                    t.host, t.port, ssl_context=ssl.create_default_context(),
                    https_compatible=True)
            return await trio.open_tcp_stream(t.host, t.port)
    except trio.TooSlowError:
        raise Lost(f"cannot connect to {url}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise Lost(f"cannot connect to {url}: {reason(exc)}") from None


async def _handshake(nursery: trio.Nursery, stream: EofAwareStream, t: httpclient.Target,
                     token: str, timeout: float, max_message_bytes: int,
                     user_agent: str) -> WebSocketConnection:
    headers = [(b"Authorization", f"Bearer {token}".encode()),
               (b"User-Agent", user_agent.encode())]
    done: list[WebSocketConnection] = []
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as race:

            async def shake() -> None:
                # Typed for trio's own streams; any trio.abc.Stream works.
                done.append(await wrap_client_stream(
                    nursery, stream, t.host_header, t.target,  # type: ignore[arg-type]
                    extra_headers=headers, max_message_size=max_message_bytes))
                race.cancel_scope.cancel()

            async def eof() -> None:
                await stream.eof.wait()
                race.cancel_scope.cancel()

            race.start_soon(shake)
            race.start_soon(eof)
    if done:
        return done[0]
    if stream.eof.is_set():
        raise Lost("the server closed the connection during the WebSocket handshake")
    raise Lost(f"no WebSocket handshake within {timeout:g} s")


def translate(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real reason in an exception group, as Refused or Lost for the library's
    errors, or the caller's own exception unchanged; a group of Cancelled is re-raised."""
    leaves: list[BaseException] = []

    def flatten(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                flatten(sub)
        elif not isinstance(e, trio.Cancelled):
            leaves.append(e)

    flatten(group)
    if not leaves:
        raise group
    exc = leaves[0]
    if isinstance(exc, ConnectionRejected):
        status = exc.status_code
        if status in (401, 403):
            body = (exc.body or b"").decode("utf-8", "replace")
            return Refused(f"HTTP {status} {_message_of(body)}".rstrip())
        return Lost(f"the hub rejected the connection (HTTP {status})", status)
    if isinstance(exc, ConnectionClosed):
        code = exc.reason.code if exc.reason is not None else None
        why = (exc.reason.reason or "") if exc.reason is not None else ""
        if code in REFUSED_CLOSE_CODES:
            return Refused(f"{code} {REFUSED_CLOSE_CODES[code]}" + (f": {why}" if why else ""))
        return Lost(f"connection closed ({code}{' ' + why if why else ''})", code=code)
    if isinstance(exc, HandshakeError | OSError | trio.BrokenResourceError
                  | trio.ClosedResourceError):
        return Lost(f"connection lost: {reason(exc)}")
    return exc


@asynccontextmanager
async def connect(url: str, token: str, *, max_message_bytes: int,
                  connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
                  user_agent: str = httpclient.USER_AGENT,
                  ) -> AsyncIterator[WebSocketConnection]:
    """A connection to ``url`` (``ws://`` or ``wss://``) for the block's duration."""
    try:
        t = httpclient.parse_url(url, httpclient.WS_SCHEMES)
    except ValueError as exc:
        raise Lost(str(exc)) from None
    stream = await _open_stream(url, t, connect_timeout_seconds)
    watched = EofAwareStream(stream)
    try:
        async with trio.open_nursery() as nursery:
            ws = await _handshake(nursery, watched, t, token, connect_timeout_seconds,
                                  max_message_bytes, user_agent)
            try:
                yield ws
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise translate(group) from None
    finally:
        await trio.aclose_forcefully(stream)
