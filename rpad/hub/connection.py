"""One authenticated WebSocket connection and its three tasks.

The *reader* takes client messages (rate limited) to the hub's actions; the *writer* drains the
connection's :class:`~rpad.hub.outbox.Outbox` into the socket (:mod:`rpad.hub.wire`); the
*timer* sends keepalive pings, enforces the pong deadline and the token's expiry.

Resource handling: the three tasks run in the connection's own nursery (opened by the hub's
handler); :meth:`Connection.close` empties the outbox at once and gives the writer
``CLOSE_TIMEOUT_SECONDS`` to send the close frame, after which the nursery is cancelled.

Error handling: the peer going away ends only this connection; what the connection was closed
with is kept in ``close_code`` / ``close_reason``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ..config import WebSocketConfig
from ..core.principal import Principal
from . import wire
from .codes import (
    CLOSE_ABNORMAL,
    CLOSE_KEEPALIVE,
    CLOSE_NORMAL,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY,
    truncate_reason,
)
from .outbox import Outbox

log = logging.getLogger(__name__)

# How long a connection being closed by the server may take to finish its close handshake.
CLOSE_TIMEOUT_SECONDS = 10.0
# Messages from one connection: a sustained rate and a burst (a token bucket). Over it, messages
# are dropped (the first with ERROR rate_limited); after FLOOD_CLOSE_AFTER_DROPPED drops the
# connection is closed with 4029. A dashboard sends a handful per minute.
MESSAGES_PER_SECOND = 50.0
MESSAGE_BURST = 200
FLOOD_CLOSE_AFTER_DROPPED = 500


class MessageRate:
    """A token bucket of ``burst`` messages refilled at ``per_second`` (by default a
    dashboard's: MESSAGE_BURST and MESSAGES_PER_SECOND)."""

    __slots__ = ("burst", "dropped", "dropped_in_a_row", "last", "per_second", "tokens")

    def __init__(self, per_second: float = MESSAGES_PER_SECOND,
                 burst: int = MESSAGE_BURST) -> None:
        self.per_second = per_second
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last: float | None = None
        self.dropped = 0
        self.dropped_in_a_row = 0

    def allow(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.per_second)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.dropped_in_a_row = 0
            return True
        self.dropped += 1
        self.dropped_in_a_row += 1
        return False


class ConnectionHost(Protocol):
    """What a connection's tasks need from the hub that serves it."""

    config: WebSocketConfig
    wall_clock: Callable[[], float]

    def on_close(self, c: Connection, code: int, dropped: int) -> None: ...

    def on_sent(self, c: Connection, n: int) -> None: ...

    def on_received(self, c: Connection) -> None: ...

    def on_rate_limited(self, c: Connection, *, first: bool) -> None:
        """A message dropped by the rate limit (``first`` of a run: tell the client)."""
        ...

    def handle(self, c: Connection, raw: str | bytes) -> Awaitable[None]: ...

    def mark_dirty(self, c: Connection) -> None: ...

    def next_ping_payload(self) -> bytes: ...


@attrs.define(eq=False)
class Connection:
    """One authenticated WebSocket connection."""

    id: str
    principal: Principal
    ws: WebSocketConnection
    outbox: Outbox
    connected_at: float
    metadata: dict[str, Any]
    host: ConnectionHost
    topics: set[str] = attrs.Factory(set)
    last_ping: float | None = None
    last_pong: float | None = None
    rtt_seconds: float | None = None
    # Trio times at which the pings still waiting for a pong were sent, by payload.
    pending_pings: dict[bytes, float] = attrs.Factory(dict)
    # Trio time at which the token expires (after leeway); inf for none.
    expires_at: float = math.inf
    messages_sent: int = 0
    messages_received: int = 0
    close_code: int | None = None
    close_reason: str = ""
    scope: trio.CancelScope | None = None
    nursery: trio.Nursery | None = None
    timer_scope: trio.CancelScope | None = None
    # The reader's limit on incoming messages (agents' control channels have a looser one).
    rate: MessageRate = attrs.Factory(MessageRate)

    @property
    def user_id(self) -> str:
        return self.principal.sub

    @property
    def is_alive(self) -> bool:
        return not self.pending_pings

    @property
    def unanswered_since(self) -> float | None:
        return min(self.pending_pings.values()) if self.pending_pings else None

    @property
    def queued(self) -> int:
        return self.outbox.queued

    def close(self, code: int, reason: str) -> None:
        """Begin closing with ``code``: the outbox is emptied at once, the host is told (the
        connection leaves its topics), and the writer sends the close frame within
        ``CLOSE_TIMEOUT_SECONDS``. Idempotent."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = truncate_reason(reason)
        dropped = self.outbox.close()
        self.host.on_close(self, code, dropped)
        if self.scope is not None:
            self.scope.deadline = min(self.scope.deadline,
                                      trio.current_time() + CLOSE_TIMEOUT_SECONDS)

    def set_expiry(self, p: Principal, leeway_seconds: float) -> None:
        """The trio deadline of ``p``'s token (after leeway), from its wall-clock ``exp``."""
        if p.exp is None:
            self.expires_at = math.inf
        else:
            self.expires_at = trio.current_time() + (p.exp + leeway_seconds
                                                     - self.host.wall_clock())
        if self.timer_scope is not None:
            self.timer_scope.cancel()  # the timer re-reads the deadline

    def start(self, nursery: trio.Nursery) -> None:
        """Start the reader, the writer and the timer in ``nursery``, the connection's own
        (its cancel scope is the connection's: the writer cancels it once closed)."""
        self.scope = nursery.cancel_scope
        self.nursery = nursery
        if self.close_code is not None:  # closed before its tasks started
            nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT_SECONDS
        nursery.start_soon(self._writer)
        nursery.start_soon(self._reader)
        nursery.start_soon(self._timer)

    # -- the writer ----------------------------------------------------------------------------

    async def _writer(self) -> None:
        box = self.outbox
        try:
            while True:
                texts = box.take_nowait()
                if texts is None:
                    texts = box.gather(await box.receive())
                if box.batch:
                    box.writing = True
                    try:
                        await wire.send_batched(self.ws, texts)
                    finally:
                        box.writing = False
                    if box.pending and not box.dirty:
                        self.host.mark_dirty(self)
                else:
                    await wire.send_frames(self.ws, texts)
                self.messages_sent += len(texts)
                self.host.on_sent(self, len(texts))
        except (trio.EndOfChannel, ConnectionClosed):
            pass
        if self.close_code is None:  # the peer is gone
            why = self.ws.closed
            self.close(why.code if why is not None else CLOSE_ABNORMAL, "connection lost")
        code = self.close_code or CLOSE_NORMAL
        if code not in (CLOSE_ABNORMAL, CLOSE_TOO_BIG) and self.ws.closed is None:
            with trio.move_on_after(CLOSE_TIMEOUT_SECONDS):
                await self.ws.aclose(code, self.close_reason or None)
        assert self.scope is not None
        self.scope.cancel()

    # -- the reader ----------------------------------------------------------------------------

    async def _reader(self) -> None:
        rate = self.rate
        try:
            while True:
                raw = await self.ws.get_message()
                self.messages_received += 1
                self.host.on_received(self)
                if rate.allow(trio.current_time()):
                    if self.close_code is None:
                        await self.host.handle(self, raw)
                    continue
                self.host.on_rate_limited(self, first=rate.dropped_in_a_row == 1)
                if rate.dropped >= FLOOD_CLOSE_AFTER_DROPPED:
                    log.warning("WebSocket %s (user %s) closed: message flood", self.id,
                                self.user_id)
                    self.close(CLOSE_TOO_MANY, "too many messages")
                    return
        except ConnectionClosed as exc:
            if self.close_code is None:
                # The peer closed, or trio-websocket closed it (1009: message too big).
                why = exc.reason
                self.close(why.code if why is not None else CLOSE_ABNORMAL,
                           (why.reason or "") if why is not None else "")

    # -- keepalive and expiry ------------------------------------------------------------------

    async def _timer(self) -> None:
        """Keepalive pings every ``ping_interval_seconds``; 4408 when a ping has waited
        ``pong_timeout_seconds`` for its pong; 4009 when the token expires."""
        config = self.host.config
        next_ping = trio.current_time() + config.ping_interval_seconds
        while True:
            config = self.host.config  # a reload applies at once
            deadline = min(next_ping, self.expires_at)
            waiting = self.unanswered_since
            if waiting is not None:
                deadline = min(deadline, waiting + config.pong_timeout_seconds)
            with trio.CancelScope(deadline=deadline) as scope:
                self.timer_scope = scope
                await trio.sleep_forever()
            self.timer_scope = None
            now = trio.current_time()
            if now >= self.expires_at:
                self.close(CLOSE_TOKEN_EXPIRED, "the token has expired")
                return
            waiting = self.unanswered_since
            if waiting is not None and now >= waiting + config.pong_timeout_seconds:
                self.close(CLOSE_KEEPALIVE, f"no pong within {config.pong_timeout_seconds:g} s")
                return
            if now >= next_ping:
                interval = config.ping_interval_seconds
                next_ping += interval
                if next_ping <= now:  # fell behind (a reload shortened the interval)
                    next_ping = now + interval
                assert self.nursery is not None
                self.nursery.start_soon(self.ping, math.inf)

    async def ping(self, timeout_seconds: float) -> float | None:
        """Send a WebSocket ping and wait for its pong; returns the round trip in seconds, or
        None if it did not come within ``timeout_seconds`` or the connection closed.

        While it waits, the ping counts as unanswered (``isAlive`` false, and the keepalive
        deadline runs from the oldest unanswered ping); a pong also answers earlier pings."""
        payload = self.host.next_ping_payload()
        sent_at = trio.current_time()
        self.pending_pings[payload] = sent_at
        self.last_ping = self.host.wall_clock()
        try:
            with trio.move_on_after(timeout_seconds):
                await self.ws.ping(payload)
                rtt = trio.current_time() - sent_at
                self.last_pong = self.host.wall_clock()
                self.rtt_seconds = rtt
                return rtt
        except ConnectionClosed:
            pass
        finally:
            self.pending_pings.pop(payload, None)
        return None
