"""A small outbound HTTP/1.1 client on Trio streams: one request per connection.

Used by the alert webhooks and the reference agent (``rpad agent``). It speaks HTTP through
h11 (already required by Hypercorn and trio-websocket) over ``trio.open_tcp_stream``, with TLS
from the standard library for ``https://`` URLs. Everything happens in the calling task, so it
is cancellable and runs on Trio's fake clock in tests: no threads.

Resource handling: each call opens one connection and closes it before returning, also on
error and cancellation. The response body is read up to :data:`MAX_RESPONSE_BYTES`.

Error handling: anything that means "the request did not get an HTTP answer" (refused or reset
connection, DNS failure, TLS failure, malformed response, timeout) is raised as
:class:`HttpError` with a readable reason; an HTTP status, including 4xx and 5xx, is a normal
:class:`HttpResponse`.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
import h11
import trio

from .. import __version__

MAX_RESPONSE_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 65536
USER_AGENT = f"rpad/{__version__}"


class HttpError(Exception):
    """The request got no usable HTTP response. ``str()`` says why."""


@attrs.frozen
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@attrs.frozen
class Target:
    scheme: str
    host: str
    port: int
    target: str
    host_header: str

    @property
    def secure(self) -> bool:
        return self.scheme in _SECURE_SCHEMES


HTTP_SCHEMES = ("http", "https")
WS_SCHEMES = ("ws", "wss")
_SECURE_SCHEMES = ("https", "wss")


def parse_url(url: str, schemes: tuple[str, str] = HTTP_SCHEMES) -> Target:
    """Split a URL of one of ``schemes`` (plain, secure): ``http``/``https`` by default,
    :data:`WS_SCHEMES` for the hub. Raises ValueError with the reason."""
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"{url!r}: only {schemes[0]}:// and {schemes[1]}:// URLs are supported")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host name")
    try:
        port = parts.port or (443 if parts.scheme in _SECURE_SCHEMES else 80)
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 0 to 65535") from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host_header = parts.netloc.rpartition("@")[2]
    return Target(parts.scheme, parts.hostname, port, target, host_header)


async def request(method: str, url: str, *, body: bytes | None = None,
                  headers: Mapping[str, str] | None = None, timeout_seconds: float,
                  ssl_context: ssl.SSLContext | None = None) -> HttpResponse:
    """Send one request and read the whole response within ``timeout_seconds``."""
    try:
        t = parse_url(url)
    except ValueError as exc:
        raise HttpError(str(exc)) from None
    with trio.move_on_after(timeout_seconds) as scope:
        try:
            return await _exchange(method, t, body, headers or {}, ssl_context)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise HttpError(f"cannot reach {t.host}:{t.port}: {_reason(exc)}") from None
        except h11.ProtocolError as exc:
            raise HttpError(f"{t.host}:{t.port} sent a malformed HTTP response: {exc}") from None
    assert scope.cancelled_caught
    raise HttpError(f"no response from {t.host}:{t.port} within {timeout_seconds:g} s")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        return _reason(cause)
    return str(exc) or type(exc).__name__


async def _exchange(method: str, t: Target, body: bytes | None, headers: Mapping[str, str],
                    ssl_context: ssl.SSLContext | None) -> HttpResponse:
    stream: trio.abc.Stream = await trio.open_tcp_stream(t.host, t.port)
    try:
        if t.secure:
            ctx = ssl_context or ssl.create_default_context()
            tls = trio.SSLStream(stream, ctx, server_hostname=t.host, https_compatible=True)
            stream = tls
            await tls.do_handshake()
        conn = h11.Connection(our_role=h11.CLIENT)
        given = {k.lower() for k in headers}
        head: list[tuple[str, str]] = [
            (k, v) for k, v in (("Host", t.host_header), ("User-Agent", USER_AGENT))
            if k.lower() not in given]
        head += [(k, v) for k, v in headers.items() if k.lower() != "connection"]
        head.append(("Connection", "close"))
        if body is not None:
            head.append(("Content-Length", str(len(body))))
        data = conn.send(h11.Request(method=method, target=t.target, headers=head))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        return await _read_response(conn, stream)
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(1):
                await stream.aclose()


async def _read_response(conn: h11.Connection, stream: trio.abc.Stream) -> HttpResponse:
    status = 0
    headers: dict[str, str] = {}
    chunks: list[bytes] = []
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(READ_CHUNK_BYTES)))
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size <= MAX_RESPONSE_BYTES:
                chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            if not status:
                raise h11.RemoteProtocolError("the connection closed before a response")
            return HttpResponse(status, headers, b"".join(chunks))
