"""The WebSocket hub (SPEC §5): connections, topics, fan-out, keepalive and management.

One ``trio_websocket.serve_websocket`` listener on ``websocket.listen``, paths ``/ws`` and
``/api/v1/client/ws``. Each accepted connection gets its own small nursery with three tasks:
the *reader* (client actions), the *writer* (drains the connection's outgoing queue into the
socket) and the *timer* (keepalive pings, the pong deadline, token expiry).

Fan-out. Every connection has one bounded trio memory channel of ``websocket.queue_size``
items. Publishing is synchronous: a message is serialized once and the same string is handed to
each subscriber's channel with ``send_nowait``; the publisher never awaits a subscriber. When a
channel is full, a newer ``SERVER_LIST`` or ``STATS_UPDATE`` replaces the stale one (latest
wins); any other message closes that connection with 4008 and drops its queue, and the client
resumes with ``since``.

Conflation. A conflatable message is queued as a :class:`_Slot`, a small mutable holder. The
connection remembers its live slot per (topic, type). A newer message takes a fresh slot at the
tail and empties the old one (the writer skips empty slots), so order is kept; when the channel
is full it overwrites the live slot in place instead. If the channel is full and no slot is
live, the message waits in a one-per-key side slot that the writer sends as soon as the channel
runs dry. Memory per connection is bounded by the channel plus one side slot per key.

Resumable streams. Every topic has a ``seq`` that grows by one per message and keeps its last
``websocket.history_size`` serialized messages; ``subscribe`` with ``since`` replays what was
missed, or answers ``recovered: false`` when it is no longer there. State topics (``servers``,
``stats``) keep no history: a subscriber gets the current state at once instead. ``epoch``
changes with every start of rpad, so clients know when seqs start afresh.

Access. A bad or missing token closes with 4001; failed authentications count per address
together with the HTTP API's, and an address over ``auth.max_failures_per_minute`` is refused
(4001) for a while. Agent tokens are refused (4003): an agent's only read right is its own status, which
the hub does not offer per client. Viewers, services and admins may subscribe to the built-in
topics (``stats`` only admins) and to topics matching their token's ``topics`` globs (admins to
anything). A forbidden subscribe is answered with ``ERROR {code: "forbidden"}`` and the
connection stays usable. Publishing from a WebSocket needs a matching ``publish`` glob (or the
admin role); the topics rpad itself feeds (``client_status``, ``heartbeat``, ``servers``,
``stats``) take no outside messages. Every connection is subscribed to ``system`` from the start
and cannot leave it, so a broadcast reaches everyone.

Origin. With ``websocket.allowed_origins`` set, a handshake whose ``Origin`` header is not in
the list is accepted and then closed with 1008, because a browser cannot observe the HTTP
status of a refused handshake but does see a close code. Clients that send no ``Origin`` (not
browsers) are not affected: the check protects browsers from cross-site use of their tokens.

Resource handling: the hub owns the listener and a handler nursery; :meth:`Hub.run` runs until
:meth:`Hub.aclose` (or cancellation). Shutdown stops accepting, closes every connection with
1001 and gives the handlers ``SHUTDOWN_DEADLINE_SECONDS`` before cancelling them. A connection
being closed by the server gets ``CLOSE_TIMEOUT_SECONDS`` to finish its close handshake (a
stalled peer cannot hold the writer longer); then its TCP connection is dropped.

Error handling: a peer that goes away (``ConnectionClosed``) ends its own connection only. A
bad client message gets ``ERROR {code, message}`` and the connection stays open. An unexpected
exception while serving one connection is a bug: it is logged with its traceback and counted,
that connection is dropped, and the other connections and the daemon carry on, because all
shared state is changed synchronously and is never left half-updated by one connection.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import json
import logging
import math
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qs

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    Endpoint,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)
from wsproto.events import TextMessage

from .auth import Authenticator, AuthError, Principal, bearer_token
from .config import WebSocketConfig, parse_listen
from .models import has_lone_surrogate, iso
from .proxy import client_address
from .registry import CLIENT_CONNECTED, CLIENT_DISCONNECTED, HEARTBEAT_RECEIVED, OFFLINE, Event

log = logging.getLogger(__name__)

WS_PATHS = ("/ws", "/api/v1/client/ws")

# -- topics and message types --------------------------------------------------------------------

TOPIC_CLIENT_STATUS = "client_status"
TOPIC_HEARTBEAT = "heartbeat"
TOPIC_SERVERS = "servers"
TOPIC_NOTIFICATIONS = "notifications"
TOPIC_SYSTEM = "system"
TOPIC_STATS = "stats"
BUILTIN_TOPICS = frozenset({TOPIC_CLIENT_STATUS, TOPIC_HEARTBEAT, TOPIC_SERVERS,
                            TOPIC_NOTIFICATIONS, TOPIC_SYSTEM, TOPIC_STATS})
# Built-in topics every viewer, service and admin may subscribe to.
VIEWER_TOPICS = BUILTIN_TOPICS - {TOPIC_STATS}
# Topics only rpad itself publishes to.
RPAD_ONLY_TOPICS = frozenset({TOPIC_CLIENT_STATUS, TOPIC_HEARTBEAT, TOPIC_SERVERS, TOPIC_STATS})
TOPIC_RE = re.compile(r"[a-z][a-z0-9_.:-]{0,127}")
TYPE_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")

SERVER_LIST = "SERVER_LIST"
# push.mode = "delta": the clients that changed since the previous push, and those removed.
SERVER_LIST_DELTA = "SERVER_LIST_DELTA"
STATS_UPDATE = "STATS_UPDATE"
NOTIFICATION = "NOTIFICATION"
SYSTEM_MESSAGE = "SYSTEM_MESSAGE"
CONNECTION_ESTABLISHED = "CONNECTION_ESTABLISHED"
SUBSCRIBED = "SUBSCRIBED"
UNSUBSCRIBED = "UNSUBSCRIBED"
PONG = "PONG"
ERROR = "ERROR"
TOKEN_REFRESHED = "TOKEN_REFRESHED"
PUBLISHED = "PUBLISHED"
# Complete states: a newer one makes a queued older one worthless.
CONFLATABLE_TYPES = frozenset({SERVER_LIST, STATS_UPDATE})
NOTIFICATION_LEVELS = ("info", "success", "warning", "error", "urgent")

# -- close codes ---------------------------------------------------------------------------------

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_ABNORMAL = 1006
CLOSE_ORIGIN = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_UNAUTHORIZED = 4001
CLOSE_FORBIDDEN = 4003
CLOSE_SLOW_CONSUMER = 4008
CLOSE_TOKEN_EXPIRED = 4009
CLOSE_BY_ADMIN = 4010
CLOSE_TOO_MANY = 4029
CLOSE_KEEPALIVE = 4408

# The names under which disconnections are counted.
CLOSE_REASON_NAMES = {
    CLOSE_GOING_AWAY: "going_away",
    CLOSE_ABNORMAL: "connection_lost",
    CLOSE_ORIGIN: "origin_not_allowed",
    CLOSE_TOO_BIG: "message_too_big",
    CLOSE_INTERNAL_ERROR: "internal_error",
    CLOSE_UNAUTHORIZED: "unauthorized",
    CLOSE_FORBIDDEN: "forbidden",
    CLOSE_SLOW_CONSUMER: "slow_consumer",
    CLOSE_TOKEN_EXPIRED: "token_expired",
    CLOSE_BY_ADMIN: "disconnected_by_admin",
    CLOSE_TOO_MANY: "too_many_connections",
    CLOSE_KEEPALIVE: "keepalive_timeout",
}

# -- limits and timeouts -------------------------------------------------------------------------

HANDSHAKE_TIMEOUT_SECONDS = 10.0
# How long a connection being closed by the server may take to finish its close handshake.
CLOSE_TIMEOUT_SECONDS = 10.0
# How long open connections get at shutdown to receive their 1001 before they are cut.
SHUTDOWN_DEADLINE_SECONDS = 5.0
PING_USER_TIMEOUT_SECONDS = 5.0
MAX_PING_USER_TIMEOUT_SECONDS = 30.0
MAX_SUBSCRIPTIONS_PER_CONNECTION = 100
# Topics are created on first use; beyond this many, the least recently used topic without
# subscribers (and its history) is forgotten. Built-in topics are never forgotten.
MAX_TOPICS = 2000
# WebSocket close reasons are limited to 123 bytes of UTF-8.
MAX_CLOSE_REASON_BYTES = 123
# Frame batching (opt-in at auth): the queued messages of a connection go out together, joined
# by newlines into one text frame of about this many characters at most (a single larger
# message goes alone). A batching connection gets at most one frame of topic messages per this
# long: the first after a quiet spell at once, the next ones gathered until this long after
# it (events published one by one, as app events are, would otherwise each go out alone while
# the writers keep up).
BATCH_FRAME_CHARS = 64 * 1024
BATCH_DELAY_SECONDS = 0.005
# ... per this many batching connections given a frame in the same round (1,000 dashboards
# watching a busy fleet get a frame every 50 ms at most).
BATCH_CONNECTIONS_PER_DELAY = 100
# Messages from one connection: a sustained rate and a burst (a token bucket). Over it, messages
# are dropped (the first with ERROR rate_limited); after FLOOD_CLOSE_AFTER_DROPPED drops the
# connection is closed with 4029. A dashboard sends a handful per minute.
MESSAGES_PER_SECOND = 50.0
MESSAGE_BURST = 200
FLOOD_CLOSE_AFTER_DROPPED = 500


# One encoder for the wire, built once (json.dumps with these options builds one per call).
_WIRE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# What json.dumps makes of a str: the ASCII-escaped JSON string.
_json_str = json.encoder.encode_basestring_ascii


def _dumps(data: Any) -> str:
    """JSON for the wire. Raises ValueError (NaN, infinity) or TypeError (not JSON data)."""
    return _WIRE_ENCODER.encode(data)


def envelope(type_: str, topic: str | None, seq: int | None, ts: str | None, data_json: str) -> str:
    """The one server → client shape, ``{"type","topic","seq","ts","data"}``, around data that
    is already serialized (so a payload is serialized once however often it is wrapped).

    The result is always valid UTF-8 text: JSON input may carry lone surrogates (``"\\ud800"``
    parses to a Python string that UTF-8 cannot encode), and one such string must not break
    the socket writes of every subscriber; they are sent escaped instead."""
    text = (f'{{"type":{_json_str(type_)},'
            f'"topic":{"null" if topic is None else _json_str(topic)},'
            f'"seq":{"null" if seq is None else int.__repr__(seq)},'
            f'"ts":{"null" if ts is None else _json_str(ts)},"data":{data_json}}}')
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=True)
    return text


def can_write_together(ws: WebSocketConnection) -> bool:
    """Whether :func:`send_texts` can write several frames at once on ``ws`` (it uses
    trio-websocket internals; with a version that lacks them it sends one by one)."""
    return all(getattr(ws, name, None) is not None
               for name in ("_wsproto", "_stream", "_stream_lock", "_abort_web_socket"))


async def send_texts(ws: WebSocketConnection, texts: list[str]) -> None:
    """Send each text as its own text frame — the very bytes ``send_message`` would send one
    by one — in a single write to the socket. One write and one scheduler round instead of one
    per message is most of what a queued message costs to send. Raises ConnectionClosed like
    ``send_message``."""
    if len(texts) == 1 or not can_write_together(ws):
        for text in texts:
            await ws.send_message(text)
        return
    if ws._close_reason:
        raise ConnectionClosed(ws._close_reason)
    data = b"".join([ws._wsproto.send(TextMessage(data=text)) for text in texts])
    async with ws._stream_lock:
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            assert ws._close_reason is not None
            raise ConnectionClosed(ws._close_reason) from None


def _truncate_reason(reason: str) -> str:
    data = reason.encode("utf-8", "replace")
    return data[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


def may_subscribe(p: Principal, topic: str) -> bool:
    if p.role == "agent":
        return False
    if p.is_admin or topic in VIEWER_TOPICS:
        return True
    return any(fnmatch.fnmatchcase(topic, glob) for glob in p.topics)


def may_publish_from_websocket(p: Principal, topic: str) -> bool:
    if topic in RPAD_ONLY_TOPICS or p.role == "agent":
        return False
    if p.is_admin:
        return True
    return any(fnmatch.fnmatchcase(topic, glob) for glob in p.publish)


class AuthLimiter(Protocol):
    """Failed authentications per peer address (shared with the HTTP API)."""

    def blocked(self, peer: str) -> bool: ...

    def failed(self, peer: str) -> None: ...


class _NoLimit:
    def blocked(self, peer: str) -> bool:
        return False

    def failed(self, peer: str) -> None:
        pass


# -- queue items ---------------------------------------------------------------------------------


class _Slot:
    """A conflatable message in a connection's queue; ``text`` None once superseded."""

    __slots__ = ("key", "text")

    def __init__(self, key: str, text: str) -> None:
        self.key = key
        self.text: str | None = text


class _Batch:
    """Several messages that take one queue place (a ``since`` replay)."""

    __slots__ = ("texts",)

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts


class _Frame(_Batch):
    """A batching connection's topic messages gathered since the last flush (one queue
    place); they count in its ``backlog`` until its writer takes them."""

    __slots__ = ()


_Item = str | _Slot | _Batch


@attrs.define(eq=False)
class Connection:
    """One authenticated WebSocket connection and its bounded outgoing queue."""

    id: str
    principal: Principal
    ws: WebSocketConnection
    send: trio.MemorySendChannel[_Item]
    recv: trio.MemoryReceiveChannel[_Item]
    connected_at: float
    metadata: dict[str, Any]
    topics: set[str] = attrs.Factory(set)
    # Live conflatable slots in the queue, and side slots waiting for room, by (topic, type).
    slots: dict[str, _Slot] = attrs.Factory(dict)
    deferred: dict[str, str] = attrs.Factory(dict)
    last_ping: float | None = None
    last_pong: float | None = None
    rtt_seconds: float | None = None
    # Trio times at which the pings still waiting for a pong were sent, by payload.
    pending_pings: dict[bytes, float] = attrs.Factory(dict)
    # Trio time at which the token expires (after leeway); inf for none.
    expires_at: float = math.inf
    messages_sent: int = 0
    messages_received: int = 0
    # Frame batching, asked for at auth (``?batch=1`` or ``"batch": true``): topic messages
    # wait in ``pending`` until the hub's flusher (or any other message for this connection,
    # which must not overtake them) moves them to the queue as one item. ``backlog``: topic
    # messages not yet taken by the writer (pending or queued), at most ``queue_size``.
    batch: bool = False
    pending: list[str] = attrs.Factory(list)
    backlog: int = 0
    # True while a batching connection's writer is sending: the flusher leaves its messages
    # pending (the writer hands them back to the flusher when done), so under load frames
    # grow with the time a write takes. ``dirty``: in the flusher's list.
    writing: bool = False
    dirty: bool = False
    # Trio time of the last flush (at most one per BATCH_DELAY_SECONDS).
    flushed_at: float = -math.inf
    close_code: int | None = None
    close_reason: str = ""
    scope: trio.CancelScope | None = None
    nursery: trio.Nursery | None = None
    timer_scope: trio.CancelScope | None = None

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
        return (self.recv.statistics().current_buffer_used + len(self.deferred)
                + len(self.pending))

    def _put(self, item: _Item) -> bool:
        try:
            self.send.send_nowait(item)
        except trio.WouldBlock:
            return False
        except trio.ClosedResourceError:
            pass  # closing: nothing more is sent
        return True

    def flush(self) -> bool:
        """Move a batching connection's pending topic messages to its queue as one item.
        False means the queue is full (they stay pending)."""
        if not self.pending:
            return True
        if not self._put(_Frame(self.pending)):
            return False
        self.pending = []
        return True

    def offer(self, item: _Item) -> bool:
        """Queue without waiting (after any pending topic messages, which go first). False
        means the queue is full."""
        return (not self.pending or self.flush()) and self._put(item)

    def offer_latest(self, key: str, text: str) -> bool:
        """Queue a conflatable message; returns True if it superseded one still waiting."""
        if self.pending:
            self.flush()  # when the queue is full they stay; the flusher finds it slow
        old = self.slots.get(key)
        slot = _Slot(key, text)
        try:
            self.send.send_nowait(slot)
        except trio.WouldBlock:
            if old is not None:
                old.text = text
                return True
            superseded = key in self.deferred
            self.deferred[key] = text
            return superseded
        except trio.ClosedResourceError:
            return False
        self.slots[key] = slot
        superseded = self.deferred.pop(key, None) is not None
        if old is not None:
            old.text = None
            superseded = True
        return superseded


class _Topic:
    __slots__ = ("active", "history", "name", "seq", "subscribers")

    def __init__(self, name: str, history_size: int | None) -> None:
        self.name = name
        self.seq = 0
        self.history: deque[tuple[int, str]] | None = (
            deque(maxlen=history_size) if history_size is not None else None)
        self.subscribers: set[Connection] = set()
        # Set while the topic has subscribers (the pushers sleep on it).
        self.active = trio.Event()


@attrs.define
class _StateTopic:
    type: str
    # The complete current state, as JSON text.
    build_json: Callable[[], str]
    # A cheap value that changes whenever build_json() would return something else (optional).
    version: Callable[[], object] | None
    cached: tuple[object, str] | None = None
    # How often the state was serialized, and how often it was published to the topic.
    builds: int = 0
    pushes: int = 0


class Hub:
    """The in-process hub. Its publish side (:meth:`publish`, :meth:`publish_events`,
    :meth:`send_to_user`, :meth:`broadcast`, :meth:`notify`) is what a shared backend would
    replace; nothing on it awaits."""

    def __init__(
        self,
        config: WebSocketConfig,
        *,
        auth: Authenticator,
        epoch: str,
        wall_clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.auth = auth
        self.epoch = epoch
        self.wall_clock = wall_clock
        self.url = ""
        # Reverse proxies whose X-Forwarded-For names the real client (http.trusted_proxies).
        self.trusted_proxies: frozenset[str] = frozenset()
        # Addresses with too many failed authentications are refused (4001) for a while.
        self.limiter: AuthLimiter = _NoLimit()
        self._connections: dict[str, Connection] = {}
        self._by_user: dict[str, dict[str, Connection]] = {}
        self._topics: OrderedDict[str, _Topic] = OrderedDict()
        self._state: dict[str, _StateTopic] = {}
        self._ids = itertools.count(1)
        self._ping_ids = itertools.count(1)
        self._notification_ids = itertools.count(1)
        self._closing = trio.Event()
        self._stopped = trio.Event()
        self._accepting = False
        self._auth_waits: set[trio.CancelScope] = set()
        # Counters.
        self.total_connections = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.messages_published = 0
        self.disconnections: Counter[str] = Counter()
        self.errors = 0
        self.internal_errors = 0
        self.auth_failures = 0
        self.rejected_handshakes = 0
        self.slow_consumers = 0
        # Client messages dropped by the per-connection rate limit.
        self.rate_limited = 0
        self.conflated = 0
        # Messages discarded from the queues of closing connections.
        self.dropped = 0
        # Batching connections with topic messages waiting for the flusher.
        self._dirty: list[Connection] = []
        self._dirty_event = trio.Event()
        for name in BUILTIN_TOPICS:
            self._topic(name)

    # -- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``websocket.listen`` until :meth:`aclose`; ``task_status.started`` gets the
        ``ws://host:port/ws`` URL once the listener is bound."""
        host, port = parse_listen(self.config.listen)
        try:
            async with trio.open_nursery() as handlers:
                async with trio.open_nursery() as acceptor:
                    server = await acceptor.start(functools.partial(
                        serve_websocket, self._handle, host, port, None,
                        handler_nursery=handlers,
                        max_message_size=self.config.max_message_bytes,
                        connect_timeout=HANDSHAKE_TIMEOUT_SECONDS,
                        disconnect_timeout=CLOSE_TIMEOUT_SECONDS,
                    ))
                    # A host name may bind several listeners (::1 and 127.0.0.1): name the first.
                    bound = [e for e in server.listeners if isinstance(e, Endpoint)]
                    self.url = f"{bound[0].url}{WS_PATHS[0]}"
                    self._accepting = True
                    acceptor.start_soon(self._flusher)
                    task_status.started(self.url)
                    await self._closing.wait()
                    self._accepting = False
                    acceptor.cancel_scope.cancel()  # stop accepting
                for scope in list(self._auth_waits):
                    scope.cancel()
                for c in list(self._connections.values()):
                    self._close(c, CLOSE_GOING_AWAY, "server going away")
                handlers.cancel_scope.deadline = trio.current_time() + SHUTDOWN_DEADLINE_SECONDS
        finally:
            self._accepting = False
            self._stopped.set()

    async def aclose(self) -> None:
        """Stop accepting, close every connection with 1001 and wait for the handlers (at most
        ``SHUTDOWN_DEADLINE_SECONDS``). Idempotent."""
        self._closing.set()
        await self._stopped.wait()

    @property
    def accepting(self) -> bool:
        return self._accepting

    # -- one connection ------------------------------------------------------------------------

    async def _handle(self, request: WebSocketRequest) -> None:
        try:
            await self._serve(request)
        except ConnectionClosed:
            pass  # the peer went away during the handshake or authentication
        except Exception:
            self.internal_errors += 1
            log.exception("unexpected error serving a WebSocket connection; dropping it")

    async def _serve(self, request: WebSocketRequest) -> None:
        path, _, query = request.path.partition("?")
        if path not in WS_PATHS:
            self.rejected_handshakes += 1
            body = _dumps({"error": "not_found",
                           "message": f"no WebSocket endpoint here; use {' or '.join(WS_PATHS)}"})
            await request.reject(404, extra_headers=[(b"content-type", b"application/json")],
                                 body=body.encode())
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        ws = await request.accept()
        try:
            remote = request.remote
        except OSError:  # ENOTCONN: the peer reset the connection during the handshake
            return
        address = client_address(str(getattr(remote, "address", remote)), headers.get,
                                 self.trusted_proxies)
        if self._closing.is_set():
            await self._refuse(ws, CLOSE_GOING_AWAY, "server going away")
            return
        origin = headers.get("origin")
        if not self._origin_allowed(origin):
            log.warning("WebSocket from %s refused: origin %r not allowed", address, origin)
            await self._refuse(ws, CLOSE_ORIGIN, "origin not allowed")
            return
        authenticated = await self._authenticate(ws, query, headers, address)
        if authenticated is None:
            return
        principal, method, batch = authenticated
        if principal.role == "agent":
            await self._refuse(ws, CLOSE_FORBIDDEN, "agent tokens cannot use the WebSocket hub")
            return
        live = sum(1 for c in self._by_user.get(principal.sub, {}).values() if c.close_code is None)
        limit = self.config.max_connections_per_user
        if live >= limit:
            await self._refuse(ws, CLOSE_TOO_MANY,
                               f"too many connections for this user (limit {limit})")
            return
        send, recv = trio.open_memory_channel[_Item](self.config.queue_size)
        c = Connection(
            id=f"ws-{next(self._ids)}", principal=principal, ws=ws, send=send, recv=recv,
            connected_at=self.wall_clock(),
            metadata={"remoteAddress": address, "path": path, "origin": origin,
                      "userAgent": headers.get("user-agent"), "authMethod": method},
            expires_at=self._expiry_deadline(principal), batch=batch,
        )
        self._connections[c.id] = c
        self._by_user.setdefault(c.user_id, {})[c.id] = c
        self.total_connections += 1
        self._join(c, self._topics[TOPIC_SYSTEM])
        self._reply(c, CONNECTION_ESTABLISHED, {
            "connectionId": c.id, "userId": c.user_id, "role": principal.role,
            "epoch": self.epoch, "serverTime": iso(self.wall_clock()),
            "pingIntervalSeconds": self.config.ping_interval_seconds, "batch": c.batch,
        })
        log.debug("WebSocket %s opened: user %s (%s) from %s", c.id, c.user_id, principal.role,
                  address)
        try:
            async with trio.open_nursery() as nursery:
                c.scope = nursery.cancel_scope
                c.nursery = nursery
                if c.close_code is not None:  # closed before its tasks started
                    nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT_SECONDS
                nursery.start_soon(self._writer, c)
                nursery.start_soon(self._reader, c)
                nursery.start_soon(self._timer, c)
        except Exception:
            self._close(c, CLOSE_INTERNAL_ERROR, "internal error")
            raise
        finally:
            self._unregister(c)

    def _origin_allowed(self, origin: str | None) -> bool:
        allowed = self.config.allowed_origins
        if not allowed or origin is None:
            return True
        wanted = origin.strip().rstrip("/").lower()
        return any(a == "*" or a.strip().rstrip("/").lower() == wanted for a in allowed)

    async def _authenticate(self, ws: WebSocketConnection, query: str, headers: dict[str, str],
                            address: str) -> tuple[Principal, str, bool] | None:
        """The token from ``?token=``, the Authorization header, or a first ``auth`` message;
        returns (principal, how, whether frame batching was asked for: ``?batch=1`` or
        ``"batch": true`` in the auth message). On failure the connection is closed (4001) and
        None returned."""
        if self.limiter.blocked(address):
            self.auth_failures += 1
            await self._refuse(ws, CLOSE_UNAUTHORIZED,
                               "too many failed authentications from this address; wait and retry")
            return None
        params = parse_qs(query)
        tokens = params.get("token")
        token: str | None = tokens[0] if tokens else None
        batch = params.get("batch", [""])[-1].lower() in ("1", "true")
        method = "query"
        if not token:
            token = bearer_token(headers.get("authorization"))
            method = "header"
        if not token:
            method = "message"
            asked = await self._await_auth_message(ws)
            token = asked[0] if asked is not None else None
            batch = batch or (asked is not None and asked[1])
            if self._closing.is_set():
                await self._refuse(ws, CLOSE_GOING_AWAY, "server going away")
                return None
            if token is None:
                self.auth_failures += 1
                self.limiter.failed(address)
                await self._refuse(ws, CLOSE_UNAUTHORIZED,
                                   f"no authentication within {self.config.auth_timeout_seconds:g} s")
                return None
        try:
            principal = self.auth.verify(token)
        except AuthError as exc:
            self.auth_failures += 1
            self.limiter.failed(address)
            log.warning("WebSocket authentication failed from %s: %s", address, exc.message)
            await self._refuse(ws, CLOSE_UNAUTHORIZED, exc.message)
            return None
        return principal, method, batch

    async def _await_auth_message(self, ws: WebSocketConnection) -> tuple[str, bool] | None:
        """Read messages until ``{"action": "auth", "token", "batch"?}`` or the auth timeout;
        anything else is answered with an ERROR. Returns (token, batch)."""
        deadline = trio.current_time() + self.config.auth_timeout_seconds
        with trio.CancelScope(deadline=deadline) as scope:
            self._auth_waits.add(scope)
            rate = _MessageRate()
            try:
                while True:
                    raw = await ws.get_message()
                    if not rate.allow(trio.current_time()):
                        self.rate_limited += 1
                        if rate.dropped >= FLOOD_CLOSE_AFTER_DROPPED:
                            return None
                        continue
                    msg = _parse(raw)
                    if isinstance(msg, dict) and msg.get("action") == "auth":
                        token = msg.get("token")
                        batch = msg.get("batch", False)
                        if not isinstance(batch, bool):
                            problem = ("invalid_field", "batch must be true or false")
                        elif isinstance(token, str) and token:
                            return token, batch
                        else:
                            problem = ("invalid_field", "auth needs a token: a non-empty string")
                    elif isinstance(msg, tuple):
                        problem = msg
                    else:
                        problem = ("unauthorized",
                                   'authenticate first: {"action": "auth", "token": "<jwt>"}')
                    self.errors += 1
                    await ws.send_message(envelope(ERROR, None, None, iso(self.wall_clock()),
                                                   _dumps({"code": problem[0],
                                                           "message": problem[1]})))
            finally:
                self._auth_waits.discard(scope)
        return None

    async def _refuse(self, ws: WebSocketConnection, code: int, reason: str) -> None:
        self.disconnections[CLOSE_REASON_NAMES.get(code, "client_closed")] += 1
        with trio.move_on_after(CLOSE_TIMEOUT_SECONDS):
            await ws.aclose(code, _truncate_reason(reason))

    def _expiry_deadline(self, p: Principal) -> float:
        if p.exp is None:
            return math.inf
        return trio.current_time() + (p.exp + self.auth.leeway_seconds - self.wall_clock())

    def _unregister(self, c: Connection) -> None:
        if c.close_code is None:  # cut without a close handshake (shutdown deadline)
            self._close(c, CLOSE_GOING_AWAY, "server going away")
        self._connections.pop(c.id, None)
        mine = self._by_user.get(c.user_id)
        if mine is not None:
            mine.pop(c.id, None)
            if not mine:
                del self._by_user[c.user_id]
        assert c.close_code is not None
        reason = CLOSE_REASON_NAMES.get(c.close_code, "client_closed")
        self.disconnections[reason] += 1
        log.debug("WebSocket %s of user %s closed: %s (%d)", c.id, c.user_id, reason, c.close_code)

    def _close(self, c: Connection, code: int, reason: str) -> None:
        """Begin closing ``c`` with ``code``: it leaves its topics at once, its queue is dropped,
        and its writer sends the close frame (within ``CLOSE_TIMEOUT_SECONDS``)."""
        if c.close_code is not None:
            return
        c.close_code = code
        c.close_reason = _truncate_reason(reason)
        for name in c.topics:
            t = self._topics.get(name)
            if t is not None:
                self._leave(c, t)
        c.topics.clear()
        c.send.close()
        while True:
            try:
                item = c.recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self.dropped += len(item.texts) if isinstance(item, _Frame) else 1
        self.dropped += len(c.deferred) + len(c.pending)
        c.pending.clear()
        c.backlog = 0
        c.slots.clear()
        c.deferred.clear()
        if code == CLOSE_SLOW_CONSUMER:
            self.slow_consumers += 1
            self.dropped += 1  # the message that did not fit
            log.warning("WebSocket %s of user %s is not reading; closed as a slow consumer",
                        c.id, c.user_id)
        if c.scope is not None:
            c.scope.deadline = min(c.scope.deadline, trio.current_time() + CLOSE_TIMEOUT_SECONDS)

    async def _writer(self, c: Connection) -> None:
        try:
            while True:
                try:
                    item = c.recv.receive_nowait()
                except trio.WouldBlock:
                    if c.deferred:
                        _, text = c.deferred.popitem()
                        await self._write(c, text)
                        continue
                    item = await c.recv.receive()
                if c.batch:
                    c.writing = True
                    try:
                        await self._write_batch(c, self._gather(c, item))
                    finally:
                        c.writing = False
                    if c.pending and not c.dirty:
                        self._mark_dirty(c)
                else:
                    await self._write_each(c, self._gather(c, item))
        except (trio.EndOfChannel, ConnectionClosed):
            pass
        if c.close_code is None:  # the peer is gone
            why = c.ws.closed
            self._close(c, why.code if why is not None else CLOSE_ABNORMAL, "connection lost")
        code = c.close_code or CLOSE_NORMAL
        if code not in (CLOSE_ABNORMAL, CLOSE_TOO_BIG) and c.ws.closed is None:
            with trio.move_on_after(CLOSE_TIMEOUT_SECONDS):
                await c.ws.aclose(code, c.close_reason or None)
        assert c.scope is not None
        c.scope.cancel()

    async def _write(self, c: Connection, text: str) -> None:
        await c.ws.send_message(text)
        c.messages_sent += 1
        self.messages_sent += 1

    @staticmethod
    def _gather(c: Connection, item: _Item) -> list[str]:
        """``item`` and whatever else is queued now (up to about BATCH_FRAME_CHARS), in queue
        order; superseded conflation slots give nothing."""
        texts: list[str] = []
        size = 0
        while True:
            if isinstance(item, str):
                texts.append(item)
                size += len(item)
            elif isinstance(item, _Slot):
                if c.slots.get(item.key) is item:
                    del c.slots[item.key]
                if item.text is not None:
                    texts.append(item.text)
                    size += len(item.text)
            else:
                texts.extend(item.texts)
                size += sum(len(t) for t in item.texts)
                if isinstance(item, _Frame):
                    c.backlog -= len(item.texts)
            if size >= BATCH_FRAME_CHARS:
                return texts
            try:
                item = c.recv.receive_nowait()
            except trio.WouldBlock:
                return texts

    async def _write_each(self, c: Connection, texts: list[str]) -> None:
        """Send ``texts``, each its own frame, written to the socket together (at most about
        BATCH_FRAME_CHARS a write)."""
        start = 0
        while start < len(texts):
            end, size = start + 1, len(texts[start])
            while end < len(texts) and size + len(texts[end]) < BATCH_FRAME_CHARS:
                size += len(texts[end])
                end += 1
            await send_texts(c.ws, texts[start:end])
            c.messages_sent += end - start
            self.messages_sent += end - start
            start = end

    async def _write_batch(self, c: Connection, texts: list[str]) -> None:
        """Send ``texts`` newline-delimited, several to a text frame (a frame holds about
        BATCH_FRAME_CHARS at most; one message alone is sent as it is). JSON text never holds
        a raw newline, so a client splits a frame on newlines into whole messages."""
        start = 0
        while start < len(texts):
            end, size = start + 1, len(texts[start])
            while end < len(texts) and size + len(texts[end]) < BATCH_FRAME_CHARS:
                size += len(texts[end]) + 1
                end += 1
            await c.ws.send_message(texts[start] if end == start + 1
                                    else "\n".join(texts[start:end]))
            c.messages_sent += end - start
            self.messages_sent += end - start
            start = end

    async def _reader(self, c: Connection) -> None:
        rate = _MessageRate()
        try:
            while True:
                raw = await c.ws.get_message()
                c.messages_received += 1
                self.messages_received += 1
                if rate.allow(trio.current_time()):
                    self._on_message(c, raw)
                    continue
                self.rate_limited += 1
                if rate.dropped_in_a_row == 1:
                    self._error(c, "rate_limited",
                                f"more than {MESSAGES_PER_SECOND:g} messages per second: this one "
                                "and the next are dropped until the rate falls")
                if rate.dropped >= FLOOD_CLOSE_AFTER_DROPPED:
                    log.warning("WebSocket %s (user %s) closed: message flood", c.id, c.user_id)
                    self._close(c, CLOSE_TOO_MANY, "too many messages")
                    return
        except ConnectionClosed as exc:
            if c.close_code is None:
                # The peer closed, or trio-websocket closed it (1009: message too big).
                why = exc.reason
                self._close(c, why.code if why is not None else CLOSE_ABNORMAL,
                            (why.reason or "") if why is not None else "")

    async def _timer(self, c: Connection) -> None:
        """Keepalive pings every ``ping_interval_seconds``; 4408 when a ping has waited
        ``pong_timeout_seconds`` for its pong; 4009 when the token expires."""
        next_ping = trio.current_time() + self.config.ping_interval_seconds
        while True:
            deadline = min(next_ping, c.expires_at)
            waiting = c.unanswered_since
            if waiting is not None:
                deadline = min(deadline, waiting + self.config.pong_timeout_seconds)
            with trio.CancelScope(deadline=deadline) as scope:
                c.timer_scope = scope
                await trio.sleep_forever()
            c.timer_scope = None
            now = trio.current_time()
            if now >= c.expires_at:
                self._close(c, CLOSE_TOKEN_EXPIRED, "the token has expired")
                return
            waiting = c.unanswered_since
            if waiting is not None and now >= waiting + self.config.pong_timeout_seconds:
                self._close(c, CLOSE_KEEPALIVE,
                            f"no pong within {self.config.pong_timeout_seconds:g} s")
                return
            if now >= next_ping:
                interval = self.config.ping_interval_seconds
                next_ping += interval
                if next_ping <= now:  # fell behind (a reload shortened the interval)
                    next_ping = now + interval
                assert c.nursery is not None
                c.nursery.start_soon(self._ping, c, math.inf)

    async def _ping(self, c: Connection, timeout_seconds: float) -> float | None:
        """Send a WebSocket ping and wait for its pong; returns the round trip in seconds, or
        None if it did not come within ``timeout_seconds`` or the connection closed.

        While it waits, the ping counts as unanswered (``isAlive`` false, and the keepalive
        deadline runs from the oldest unanswered ping); a pong also answers earlier pings."""
        payload = next(self._ping_ids).to_bytes(8, "big")
        sent_at = trio.current_time()
        c.pending_pings[payload] = sent_at
        c.last_ping = self.wall_clock()
        try:
            with trio.move_on_after(timeout_seconds):
                await c.ws.ping(payload)
                rtt = trio.current_time() - sent_at
                c.last_pong = self.wall_clock()
                c.rtt_seconds = rtt
                return rtt
        except ConnectionClosed:
            pass
        finally:
            c.pending_pings.pop(payload, None)
        return None

    # -- client actions ------------------------------------------------------------------------

    def _on_message(self, c: Connection, raw: str | bytes) -> None:
        if c.close_code is not None:
            return
        msg = _parse(raw)
        if isinstance(msg, tuple):
            self._error(c, *msg)
            return
        action = msg.get("action")
        handler = self._actions.get(action) if isinstance(action, str) else None
        if handler is None:
            if not isinstance(action, str):
                self._error(c, "invalid_message", 'a message needs an "action" string')
            else:
                self._error(c, "unknown_action",
                            f"unknown action {action[:40]!r}; known: {', '.join(self._actions)}")
            return
        handler(self, c, msg)

    def _on_auth(self, c: Connection, msg: dict[str, Any]) -> None:
        self._error(c, "already_authenticated",
                    "this connection is authenticated; use refresh to replace the token")

    def _on_subscribe(self, c: Connection, msg: dict[str, Any]) -> None:
        topic = _topic_field(msg)
        if topic is None:
            self._error(c, "invalid_topic", "topic must be a string matching " + TOPIC_RE.pattern)
            return
        since = msg.get("since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int)
                                  or since < 0):
            self._error(c, "invalid_field", "since must be a non-negative integer (a seq)",
                        topic=topic)
            return
        if not may_subscribe(c.principal, topic):
            self._error(c, "forbidden", f"this token may not subscribe to {topic}", topic=topic)
            return
        if topic not in c.topics and len(c.topics) >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
            self._error(c, "too_many_subscriptions",
                        f"a connection may hold at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} "
                        "subscriptions", topic=topic)
            return
        t = self._topic(topic)
        replay, recovered = self._replay(t, since)
        self._join(c, t)
        self._reply(c, SUBSCRIBED, {"topic": topic, "seq": t.seq, "recovered": recovered})
        if replay and not c.offer(_Batch(replay)):
            self._close(c, CLOSE_SLOW_CONSUMER, "slow consumer: outgoing queue full")
            return
        state = self._state.get(topic)
        if state is not None and c.close_code is None:
            text = envelope(state.type, topic, t.seq, iso(self.wall_clock()),
                            self._state_json(state))
            if c.offer_latest(f"{topic} {state.type}", text):
                self.conflated += 1

    def _on_unsubscribe(self, c: Connection, msg: dict[str, Any]) -> None:
        topic = _topic_field(msg)
        if topic is None:
            self._error(c, "invalid_topic", "topic must be a string matching " + TOPIC_RE.pattern)
            return
        if topic == TOPIC_SYSTEM:
            self._error(c, "not_allowed",
                        "every connection receives the system topic (broadcasts)", topic=topic)
            return
        t = self._topics.get(topic)
        if t is not None and topic in c.topics:
            c.topics.discard(topic)
            self._leave(c, t)
        self._reply(c, UNSUBSCRIBED, {"topic": topic})

    def _on_ping(self, c: Connection, msg: dict[str, Any]) -> None:
        self._reply(c, PONG, {"serverTime": iso(self.wall_clock())})

    def _on_refresh(self, c: Connection, msg: dict[str, Any]) -> None:
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            self._error(c, "invalid_field", "refresh needs a token: a non-empty string")
            return
        try:
            p = self.auth.verify(token)
        except AuthError as exc:
            self.auth_failures += 1
            self._error(c, "invalid_token", exc.message)
            return
        if p.sub != c.principal.sub or p.role != c.principal.role:
            self._error(c, "forbidden", "the new token must have the same sub and role")
            return
        c.principal = p
        c.expires_at = self._expiry_deadline(p)
        if c.timer_scope is not None:
            c.timer_scope.cancel()  # the timer re-reads the deadline
        self._reply(c, TOKEN_REFRESHED, {
            "userId": p.sub, "expiresAt": iso(p.exp) if p.exp is not None else None})

    def _on_publish(self, c: Connection, msg: dict[str, Any]) -> None:
        topic = _topic_field(msg)
        if topic is None:
            self._error(c, "invalid_topic", "topic must be a string matching " + TOPIC_RE.pattern)
            return
        type_ = msg.get("type")
        if not isinstance(type_, str) or not TYPE_RE.fullmatch(type_):
            self._error(c, "invalid_field", "type must be a string matching " + TYPE_RE.pattern,
                        topic=topic)
            return
        if not may_publish_from_websocket(c.principal, topic):
            self._error(c, "forbidden", f"this token may not publish to {topic}", topic=topic)
            return
        seq, delivered = self.publish(topic, type_, msg.get("data"))
        self._reply(c, PUBLISHED, {"topic": topic, "seq": seq, "delivered": delivered})

    _actions: ClassVar[dict[str, Callable[[Hub, Connection, dict[str, Any]], None]]] = {
        "auth": _on_auth,
        "subscribe": _on_subscribe,
        "unsubscribe": _on_unsubscribe,
        "ping": _on_ping,
        "refresh": _on_refresh,
        "publish": _on_publish,
    }

    def _reply(self, c: Connection, type_: str, data: dict[str, Any]) -> None:
        """A control message to one connection (``topic`` and ``seq`` are null)."""
        if not c.offer(envelope(type_, None, None, iso(self.wall_clock()), _dumps(data))):
            self._close(c, CLOSE_SLOW_CONSUMER, "slow consumer: outgoing queue full")

    def _error(self, c: Connection, code: str, message: str, **extra: Any) -> None:
        self.errors += 1
        self._reply(c, ERROR, {"code": code, "message": message, **extra})

    # -- topics --------------------------------------------------------------------------------

    def _topic(self, name: str) -> _Topic:
        t = self._topics.get(name)
        if t is not None:
            self._topics.move_to_end(name)
            return t
        history = None if name in (TOPIC_SERVERS, TOPIC_STATS) else self.config.history_size
        t = _Topic(name, history)
        self._topics[name] = t
        if len(self._topics) > MAX_TOPICS:
            for old in self._topics.values():
                if not old.subscribers and old.name not in BUILTIN_TOPICS:
                    del self._topics[old.name]
                    break
        return t

    def _join(self, c: Connection, t: _Topic) -> None:
        c.topics.add(t.name)
        t.subscribers.add(c)
        if not t.active.is_set():
            t.active.set()

    def _leave(self, c: Connection, t: _Topic) -> None:
        t.subscribers.discard(c)
        if not t.subscribers and t.active.is_set():
            t.active = trio.Event()

    @staticmethod
    def _replay(t: _Topic, since: int | None) -> tuple[list[str], bool]:
        """What a subscriber who saw up to ``since`` missed, and whether that is complete."""
        if since is None:
            return [], False
        if t.history is None:  # a state topic: the current state follows at once
            return [], True
        if since == t.seq:
            return [], True
        if since > t.seq or not t.history or t.history[0][0] > since + 1:
            return [], False
        return [text for seq, text in t.history if seq > since], True

    def subscribers(self, topic: str) -> int:
        t = self._topics.get(topic)
        return len(t.subscribers) if t is not None else 0

    async def wait_subscribed(self, topic: str) -> None:
        """Return once ``topic`` has at least one subscriber."""
        await self._topic(topic).active.wait()

    def topic_seq(self, topic: str) -> int:
        t = self._topics.get(topic)
        return t.seq if t is not None else 0

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, topic: str, type_: str, data: Any, *,
                at: float | None = None) -> tuple[int, int]:
        """Publish to a topic's subscribers; returns (seq, connections reached). ``at``: when
        it happened (wall clock; default now), the envelope's ``ts``.

        Serialized once. Raises ValueError/TypeError for data that is not JSON (nothing is
        published then)."""
        return self.publish_json(topic, type_, _dumps(data), at=at)

    def publish_json(self, topic: str, type_: str, data_json: str, *,
                     at: float | None = None) -> tuple[int, int]:
        """:meth:`publish` for data that is JSON text already (rpad's own, not checked)."""
        t = self._topic(topic)
        t.seq += 1
        text = envelope(type_, topic, t.seq, iso(self.wall_clock() if at is None else at),
                        data_json)
        if t.history is not None:
            t.history.append((t.seq, text))
        self.messages_published += 1
        return t.seq, self._fanout(t, type_, text)

    def _fanout(self, t: _Topic, type_: str, text: str) -> int:
        if not t.subscribers:
            return 0
        if type_ in CONFLATABLE_TYPES:
            key = f"{t.name} {type_}"
            for c in t.subscribers:
                if c.offer_latest(key, text):
                    self.conflated += 1
            return len(t.subscribers)
        slow: list[Connection] = []
        limit = self.config.queue_size
        for c in t.subscribers:
            if c.batch:  # gathered until the flusher's next round (see _flusher)
                if not c.dirty:
                    self._mark_dirty(c)
                c.pending.append(text)
                c.backlog += 1
                if c.backlog > limit:
                    slow.append(c)
            elif not c.offer(text):
                slow.append(c)
        for c in slow:
            self._close(c, CLOSE_SLOW_CONSUMER, "slow consumer: outgoing queue full")
        return len(t.subscribers)  # the slow ones have left

    def _mark_dirty(self, c: Connection) -> None:
        c.dirty = True
        if not self._dirty:
            self._dirty_event.set()
        self._dirty.append(c)

    async def _flusher(self) -> None:
        """Frame batching: a batching connection's pending topic messages go to its queue as
        one item (one frame, or a few if large) at most once per BATCH_DELAY_SECONDS: the
        first after a quiet spell at once (at the end of the scheduling round that published
        it, with whatever else that round published), the next ones when BATCH_DELAY_SECONDS
        have passed since — and never while its writer is still sending (it hands them back
        when done) or has not yet taken its queue (so when the CPU is the limit, frames grow
        instead of multiplying). One task and one timer for every batching connection; none while there is
        nothing pending."""
        delay = BATCH_DELAY_SECONDS
        while True:
            await self._dirty_event.wait()
            await trio.lowlevel.checkpoint()  # let the round that published finish
            now = trio.current_time()
            dirty, self._dirty = self._dirty, []
            self._dirty_event = trio.Event()
            wait_until = math.inf
            flushed = 0
            for c in dirty:
                if c.close_code is not None:
                    c.dirty = False
                elif (c.writing or now < c.flushed_at + delay
                      or c.recv.statistics().current_buffer_used):
                    # Its turn comes later: too soon, or its writer has not even taken what
                    # it was given last time (the CPU is busy: let the frame grow meanwhile).
                    self._dirty.append(c)
                    wait_until = min(wait_until, max(now, c.flushed_at) + delay)
                else:
                    c.dirty = False
                    c.flushed_at = now
                    flushed += 1
                    if not c.flush():
                        self._close(c, CLOSE_SLOW_CONSUMER, "slow consumer: outgoing queue full")
            # Many connections flushed together take long to write: space their frames out
            # as much, so that the time left between them publishes more to each frame.
            delay = BATCH_DELAY_SECONDS * max(1.0, flushed / BATCH_CONNECTIONS_PER_DELAY)
            if self._dirty:
                self._dirty_event.set()
                await trio.sleep_until(wait_until)

    def register_state_topic(self, topic: str, type_: str, build_json: Callable[[], str], *,
                             version: Callable[[], object] | None = None) -> None:
        """Make ``topic`` a state topic: ``build_json()`` returns its complete current state as
        JSON text, sent to each new subscriber at once and by :meth:`publish_state`. With
        ``version``, the text is reused while the version is unchanged."""
        self._state[topic] = _StateTopic(type_, build_json, version)
        self._topic(topic)

    def _state_json(self, state: _StateTopic) -> str:
        key = state.version() if state.version is not None else None
        if state.cached is not None and key is not None and state.cached[0] == key:
            return state.cached[1]
        data_json = state.build_json()
        state.builds += 1
        state.cached = (key, data_json) if key is not None else None
        return data_json

    def publish_state(self, topic: str) -> int:
        """Build the state of a state topic (once) and publish it; returns connections reached.
        Does nothing without subscribers."""
        state = self._state[topic]
        t = self._topic(topic)
        if not t.subscribers:
            return 0
        data_json = self._state_json(state)
        t.seq += 1
        text = envelope(state.type, topic, t.seq, iso(self.wall_clock()), data_json)
        self.messages_published += 1
        state.pushes += 1
        return self._fanout(t, state.type, text)

    def publish_events(self, events: Sequence[Event]) -> None:
        """presence.Publisher: registry events to ``client_status`` and ``heartbeat`` (``ts``
        is when the event happened), and a NOTIFICATION when a client goes offline or comes
        back."""
        for ev in events:
            if ev.type == HEARTBEAT_RECEIVED:
                self.publish(TOPIC_HEARTBEAT, ev.type, ev.data, at=ev.at)
                continue
            self.publish(TOPIC_CLIENT_STATUS, ev.type, ev.data, at=ev.at)
            name = ev.data.get("name") or ev.client_id
            if ev.type == CLIENT_DISCONNECTED:
                why = {"timeout": "no heartbeat within its timeout",
                       "agent_shutdown": "its agent shut down"}.get(ev.reason or "", ev.reason)
                self.notify(title="Client offline", message=f"{name} went offline ({why})",
                            level="warning", auto_close=False, extra={"clientId": ev.client_id})
            elif ev.type == CLIENT_CONNECTED and ev.previous_status == OFFLINE:
                # One that was offline is back (not a client heard from for the first time).
                self.notify(title="Client online", message=f"{name} is online again",
                            level="success", auto_close=True, extra={"clientId": ev.client_id})

    def send_to_user(self, user_id: str, type_: str, data: Any) -> int:
        """A message to every connection of one user, subscribed or not (``topic`` and ``seq``
        null). Returns connections reached."""
        conns = [c for c in self._by_user.get(user_id, {}).values() if c.close_code is None]
        if not conns:
            return 0
        text = envelope(type_, None, None, iso(self.wall_clock()), _dumps(data))
        for c in conns:
            if not c.offer(text):
                self._close(c, CLOSE_SLOW_CONSUMER, "slow consumer: outgoing queue full")
        self.messages_published += 1
        return len(conns)

    def broadcast(self, type_: str, data: Any) -> tuple[int, int]:
        """A message on ``system``, which every connection holds from the start."""
        return self.publish(TOPIC_SYSTEM, type_, data)

    def notify(self, *, title: str, message: str, level: str = "info",
               action_url: str | None = None, auto_close: bool | float | None = None,
               user_id: str | None = None, topic: str | None = None,
               extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
        """A NOTIFICATION to one user's connections, to ``topic``, or else to
        ``notifications``. Returns (the notification, connections reached)."""
        now = self.wall_clock()
        data: dict[str, Any] = {
            "id": f"{self.epoch}-{next(self._notification_ids)}",
            "title": title, "message": message, "level": level, "actionUrl": action_url,
            "autoClose": auto_close, "timestamp": iso(now),
        }
        if extra:
            data.update(extra)
        if user_id is not None:
            return data, self.send_to_user(user_id, NOTIFICATION, data)
        return data, self.publish(topic or TOPIC_NOTIFICATIONS, NOTIFICATION, data)[1]

    # -- management ----------------------------------------------------------------------------

    def _live(self, user_id: str) -> list[Connection]:
        return [c for c in self._by_user.get(user_id, {}).values() if c.close_code is None]

    def disconnect_user(self, user_id: str, reason: str) -> int:
        """Close every connection of ``user_id`` with 4010; returns how many."""
        conns = self._live(user_id)
        for c in conns:
            self._close(c, CLOSE_BY_ADMIN, reason)
        if conns:
            log.info("disconnected %d connections of user %s: %s", len(conns), user_id, reason)
        return len(conns)

    async def ping_user(self, user_id: str,
                        timeout_seconds: float = PING_USER_TIMEOUT_SECONDS) -> list[dict[str, Any]]:
        """Ping each connection of ``user_id`` at once; round trips in milliseconds."""
        conns = self._live(user_id)
        results: dict[str, dict[str, Any]] = {}

        async def one(c: Connection) -> None:
            rtt = await self._ping(c, timeout_seconds)
            if rtt is None:
                results[c.id] = {"connectionId": c.id, "ok": False, "rttMs": None,
                                 "error": "closed" if c.close_code is not None else "timeout"}
            else:
                results[c.id] = {"connectionId": c.id, "ok": True, "rttMs": round(rtt * 1000, 3)}

        async with trio.open_nursery() as nursery:
            for c in conns:
                nursery.start_soon(one, c)
        return [results[c.id] for c in conns]

    def connection_view(self, c: Connection) -> dict[str, Any]:
        return {
            "connectionId": c.id,
            "userId": c.user_id,
            "role": c.principal.role,
            "connectedAt": iso(c.connected_at),
            "lastPing": iso(c.last_ping),
            "lastPong": iso(c.last_pong),
            "isAlive": c.is_alive,
            "rttMs": round(c.rtt_seconds * 1000, 3) if c.rtt_seconds is not None else None,
            "topics": sorted(c.topics),
            "queued": c.queued,
            "messagesSent": c.messages_sent,
            "messagesReceived": c.messages_received,
            "metadata": c.metadata,
        }

    def connections(self, user_id: str | None = None) -> list[dict[str, Any]]:
        if user_id is None:
            conns = list(self._connections.values())
        else:
            conns = list(self._by_user.get(user_id, {}).values())
        return [self.connection_view(c) for c in conns]

    def online_users(self) -> list[dict[str, Any]]:
        return [{"userId": user, "connections": len(conns)}
                for user, conns in sorted(self._by_user.items())]

    def stats(self) -> dict[str, Any]:
        servers = self._state.get(TOPIC_SERVERS)
        return {
            "epoch": self.epoch,
            "totalConnections": self.total_connections,
            "activeConnections": len(self._connections),
            "activeUsers": len(self._by_user),
            "messagesSent": self.messages_sent,
            "messagesReceived": self.messages_received,
            "messagesPublished": self.messages_published,
            "disconnections": dict(sorted(self.disconnections.items())),
            "errors": self.errors,
            "internalErrors": self.internal_errors,
            "authFailures": self.auth_failures,
            "rejectedHandshakes": self.rejected_handshakes,
            "slowConsumers": self.slow_consumers,
            "rateLimitedMessages": self.rate_limited,
            "conflatedMessages": self.conflated,
            "droppedMessages": self.dropped,
            "subscribersPerTopic": {name: len(t.subscribers)
                                    for name, t in sorted(self._topics.items()) if t.subscribers},
            "topics": len(self._topics),
            "serverListPushes": servers.pushes if servers is not None else 0,
            "serverListBuilds": servers.builds if servers is not None else 0,
            "queueSize": self.config.queue_size,
            "historySize": self.config.history_size,
        }

    def metrics_snapshot(self) -> dict[str, Any]:
        """For rpad.metrics (``HubStats``)."""
        return {
            "connections": len(self._connections),
            "subscribers": {name: len(t.subscribers) for name, t in self._topics.items()
                            if t.subscribers},
            "sent": self.messages_sent,
            "conflated": self.conflated,
            "dropped": self.dropped,
            "disconnects": dict(self.disconnections),
        }

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self._accepting else "stopping",
            "accepting": self._accepting,
            "activeConnections": len(self._connections),
            "epoch": self.epoch,
        }


class _MessageRate:
    """A token bucket of MESSAGE_BURST messages refilled at MESSAGES_PER_SECOND."""

    __slots__ = ("dropped", "dropped_in_a_row", "last", "tokens")

    def __init__(self) -> None:
        self.tokens = float(MESSAGE_BURST)
        self.last: float | None = None
        self.dropped = 0
        self.dropped_in_a_row = 0

    def allow(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(float(MESSAGE_BURST),
                              self.tokens + (now - self.last) * MESSAGES_PER_SECOND)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.dropped_in_a_row = 0
            return True
        self.dropped += 1
        self.dropped_in_a_row += 1
        return False


def _parse(raw: str | bytes) -> dict[str, Any] | tuple[str, str]:
    """A client message as a dict, or (code, message) for an ERROR."""
    if isinstance(raw, bytes):
        return ("invalid_message", "binary frames are not accepted; send JSON text")
    try:
        msg = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return ("invalid_json", "the message is not valid JSON")
    if not isinstance(msg, dict):
        return ("invalid_message", "a message must be a JSON object")
    if has_lone_surrogate(raw.encode("utf-8"), msg):
        return ("invalid_json", ("the message holds a lone UTF-16 surrogate escape (such as "
                                 "\\ud800), which is not valid Unicode"))
    return msg


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _topic_field(msg: dict[str, Any]) -> str | None:
    topic = msg.get("topic")
    if isinstance(topic, str) and TOPIC_RE.fullmatch(topic):
        return topic
    return None
