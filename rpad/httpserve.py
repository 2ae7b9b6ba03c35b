"""The HTTP listener: Hypercorn's HTTP/1.1 connection handling behind rpad's connection gate,
and the per-request bounds Hypercorn does not have.

What Hypercorn offers and rpad configures (see :func:`hypercorn_config`): the keep-alive
timeout (``http.keep_alive_timeout_seconds``: an idle connection between requests is closed),
the largest request head (``h11_max_incomplete_size``, 16 KiB: a larger one is answered 431 and
closed), the drain at shutdown (``http.graceful_timeout_seconds``). What it lacks, and rpad adds:

- a cap on connections per address and in all, checked at ``accept`` (:mod:`rpad.listeners`).
  Hypercorn's ``serve`` builds its own listeners from the bound sockets and offers no hook
  between ``accept`` and its connection handler, so :func:`serve_http` runs the same pieces
  ``hypercorn.trio.serve`` runs (its lifespan, worker context and per-connection
  ``TCPServer``) over guarded listeners;
- a deadline for the request head: Hypercorn's only clock before a request is its keep-alive
  timer, which also runs from the moment a connection is accepted, so a connection that sends a
  request line and then nothing would be held for the whole keep-alive timeout;
- a minimum body rate (:class:`RequestGuard`: 408 and close);
- a write timeout (:class:`GuardedStream`): Hypercorn shields its socket writes
  from cancellation, so a peer that stops reading would hold its connection, and the shutdown's
  drain, for ever;
- an end to a connection's tasks when its peer hangs up between requests (Hypercorn keeps them
  until its keep-alive timer fires, so a stream of connect-and-close would pile them up).

Resource handling: :func:`serve_http` owns its listeners (closed when it returns), the gate's
reaper task and a handler nursery; on ``shutdown_trigger`` it stops accepting, lets in-flight
requests finish for ``graceful_timeout`` and then cancels what is left. Error handling: as in
Hypercorn, a connection's errors end that connection; an error in the app is the app's (rpad's
app answers a JSON 500 and logs the traceback).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import attrs
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from .core.proxy import client_address
from .listeners import (
    BODY_TIMEOUT,
    IDLE,
    PENDING,
    SEND_TIMEOUT,
    Conn,
    ConnectionGate,
    GuardedListener,
)
from .tickets import RequestTicket, reset_ticket, set_ticket

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
# Connections the kernel queues until rpad accepts them (Hypercorn's default is 100: a fleet
# reconnecting at once would see its SYNs dropped and retried seconds later). Linux caps it at
# net.core.somaxconn.
LISTEN_BACKLOG = 1024


SEND_CHUNK_BYTES = 64 * 1024


class GuardedStream(trio.abc.HalfCloseableStream):
    """An HTTP connection's stream as Hypercorn sees it: the gate hears when a new request's
    first bytes arrive and when the peer hangs up between requests, and every ``send_all`` must
    be taken by the peer at ``SEND_CHUNK_BYTES`` per ``send_timeout()`` seconds or the
    connection is cut (Hypercorn shields its writes from cancellation, so a peer that stops
    reading would otherwise hold the connection, and the shutdown, for ever)."""

    def __init__(self, inner: trio.SocketStream, gate: ConnectionGate, conn: Conn,
                 send_timeout: Callable[[], float]) -> None:
        self.inner = inner
        self.gate = gate
        self.conn = conn
        self.send_timeout = send_timeout
        self._got_data = False
        # What read_head read, handed to Hypercorn by the first receive_some.
        self._prefix = b""

    @property
    def socket(self) -> trio.socket.SocketType:  # Hypercorn reads the peer's address here
        return self.inner.socket

    async def read_head(self, limit: int) -> bool:
        """Read until the first request's head is complete (or ``limit`` bytes have come, for
        Hypercorn to refuse): False if the peer hung up first. Until then a connection costs
        this task and a buffer, not Hypercorn's connection machinery (about a hundred
        objects, which a full garbage collection walks): a flood of half-open connections
        costs several times less memory and time."""
        buffer = bytearray()
        while True:
            chunk = await self.inner.receive_some()
            if not chunk:
                return False
            self._got_data = True
            scan_from = max(0, len(buffer) - 3)
            buffer += chunk
            if buffer.find(b"\r\n\r\n", scan_from) >= 0 or len(buffer) >= limit:
                self._prefix = bytes(buffer)
                return True

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        data = await self.inner.receive_some(max_bytes)
        conn = self.conn
        if data:
            self._got_data = True
            if conn.phase == IDLE:
                self.gate.head_started(conn)
        elif conn.scope is not None and (
                conn.phase == IDLE or (conn.phase == PENDING and not self._got_data)):
            # Hung up with certainly no request in progress (none begun, or idle since the
            # last one): Hypercorn would keep the connection's tasks until its keep-alive
            # timer fires. (Data then EOF may be a whole request: the head deadline decides.)
            self.gate.release(conn)
            conn.scope.cancel()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        start = 0
        while True:
            with trio.move_on_after(self.send_timeout()) as scope:
                await self.inner.send_all(view[start:start + SEND_CHUNK_BYTES])
            if scope.cancelled_caught:
                self.gate.cut_off(self.conn, SEND_TIMEOUT)
                raise trio.BrokenResourceError("the peer stopped reading")
            start += SEND_CHUNK_BYTES
            if start >= len(view):
                return

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        self.gate.release(self.conn)
        await self.inner.aclose()


@attrs.frozen
class BodyLimits:
    # The body may take this long, plus one second per ``min_bytes_per_second`` bytes received.
    timeout_seconds: float
    min_bytes_per_second: float


def _json_error(status: int, code: str, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"error": code, "message": message, "details": []},
                      separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    return headers, body


class RequestGuard:
    """ASGI middleware in front of the whole app (outermost): tells the gate when a request
    begins and ends, counts requests forwarded by a trusted proxy against the client address
    (429 beyond ``max_connections_per_address``), makes the request's :class:`RequestTicket`
    current (so that authentication can prove the connection), and holds the body to a minimum
    rate: the first chunk within ``timeout_seconds``, and every next one before ``timeout +
    received / min_bytes_per_second`` from the start of the request, else 408 (or, once the
    answer has begun, the connection is cut)."""

    def __init__(self, app: ASGIApp, gate: ConnectionGate,
                 body_limits: Callable[[], BodyLimits]) -> None:
        self.app = app
        self.gate = gate
        self.body_limits = body_limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gate = self.gate
        client = scope.get("client")
        conn: Conn | None = gate.find(client[0], client[1]) if client else None
        if conn is not None:
            gate.request_started(conn)
        try:
            ticket = RequestTicket(gate, conn, None)
            peer = client[0] if client else ""
            if peer and peer in gate.trusted_proxies:
                headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                           for k, v in scope["headers"]}
                address = client_address(peer, headers.get, gate.trusted_proxies)
                if address != peer:
                    ticket.key = gate.open_request(address, credentials="authorization" in headers)
                    if ticket.key is None:
                        head, body = _json_error(
                            429, "too_many_connections",
                            "too many requests in progress from this address; retry later")
                        await send({"type": "http.response.start", "status": 429,
                                    "headers": [*head, (b"retry-after", b"1")]})
                        await send({"type": "http.response.body", "body": body})
                        return
            token = set_ticket(ticket)
            try:
                await self._guarded(scope, receive, send, conn)
            finally:
                reset_ticket(token)
                ticket.end()
        finally:
            if conn is not None:
                gate.request_finished(conn)

    async def _guarded(self, scope: dict[str, Any], receive: Any, send: Any,
                       conn: Conn | None) -> None:
        limits = self.body_limits()
        start = trio.current_time()
        received = 0
        body_done = False
        started = False
        closing = False  # the answer says Connection: close
        app_scope = trio.CancelScope()

        async def guarded_receive() -> Any:
            nonlocal received, body_done
            if body_done:
                return await receive()
            deadline = start + limits.timeout_seconds + received / limits.min_bytes_per_second
            with trio.move_on_at(deadline):
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    body_done = not message.get("more_body", False)
                else:
                    body_done = True
                return message
            app_scope.cancel()
            await trio.lowlevel.checkpoint()  # raises Cancelled, caught by app_scope
            raise AssertionError("unreachable")

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started, closing
            if message["type"] == "http.response.start":
                started = True
                closing = any(k.lower() == b"connection" and b"close" in v.lower()
                              for k, v in message.get("headers", ()))
            await send(message)

        with app_scope:
            await self.app(scope, guarded_receive, guarded_send)
        if not app_scope.cancelled_caught:
            if conn is not None and (closing or not keeps_alive(scope)):
                self.gate.close_answered(conn)
            return
        if started:
            if conn is not None:
                self.gate.cut_off(conn, BODY_TIMEOUT)
            return
        self.gate.cut[BODY_TIMEOUT] += 1
        head, body = _json_error(
            408, "request_timeout",
            f"the request body arrived slower than {limits.min_bytes_per_second:g} bytes per "
            f"second (after the first {limits.timeout_seconds:g} s)")
        await send({"type": "http.response.start", "status": 408, "headers": head})
        await send({"type": "http.response.body", "body": body})


def keeps_alive(scope: dict[str, Any]) -> bool:
    """Whether the client asked to keep the connection for another request (HTTP/1.1 unless
    ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``)."""
    tokens: set[bytes] = set()
    for name, value in scope["headers"]:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    if scope.get("http_version") == "1.0":
        return b"keep-alive" in tokens
    return b"close" not in tokens


def hypercorn_config(listen: str, *, graceful_timeout_seconds: float,
                     keep_alive_timeout_seconds: float) -> HyperConfig:
    """Hypercorn's settings for rpad (the ones read per connection, such as the keep-alive
    timeout, may be changed on the returned object while serving)."""
    hc = HyperConfig()
    hc.bind = [listen]
    hc.graceful_timeout = graceful_timeout_seconds
    hc.keep_alive_timeout = keep_alive_timeout_seconds
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.include_server_header = False
    hc.backlog = LISTEN_BACKLOG
    return hc


async def serve_http(
    app: ASGIApp,
    hc: HyperConfig,
    gate: ConnectionGate,
    *,
    send_timeout: Callable[[], float],
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``hc.bind`` through ``gate``; ``task_status.started`` gets the bound
    URLs. Returns once ``shutdown_trigger`` has returned and the drain is over (at most
    ``hc.graceful_timeout`` seconds)."""
    if hc.ssl_enabled:
        raise ValueError("rpad serves plain HTTP: terminate TLS in front of it")
    asgi = wrap_app(cast(Any, app), hc.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, hc, lifespan_state)

    def guard(stream: trio.SocketStream, conn: Conn) -> trio.abc.Stream:
        return GuardedStream(stream, gate, conn, send_timeout)

    listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
    binds: list[str] = []
    for sock in hc.create_sockets().insecure_sockets:
        sock.listen(hc.backlog)
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
        listeners.append(GuardedListener(
            trio.SocketListener(trio.socket.from_stdlib_socket(sock)), gate, guard))

    async def handle(stream: trio.abc.Stream) -> None:
        assert isinstance(stream, GuardedStream)
        conn = stream.conn
        with trio.CancelScope() as scope:
            conn.scope = scope
            try:
                # Not cut before its task started, and its first request head is complete.
                if not conn.released and await stream.read_head(hc.h11_max_incomplete_size):
                    server = TCPServer(asgi, hc, context,
                                       ConnectionState(lifespan_state.copy()), cast(Any, stream))
                    await server.run()
            finally:
                gate.release(conn)
                await stream.inner.aclose()

    async with trio.open_nursery() as outer:
        await outer.start(gate.run)
        await outer.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as acceptor:
                await acceptor.start(functools.partial(
                    trio.serve_listeners, handle, listeners, handler_nursery=handlers))
                task_status.started(binds)
                await shutdown_trigger()
                acceptor.cancel_scope.cancel()  # stop accepting; closes the listeners
            await context.terminated.set()  # idle keep-alive connections close now
            handlers.cancel_scope.deadline = trio.current_time() + hc.graceful_timeout
        await lifespan.wait_for_shutdown()
        outer.cancel_scope.cancel()
