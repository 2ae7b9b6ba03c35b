"""The WebSocket hub (SPEC §5): the listener, the handshake, authentication and limits.

One trio-websocket server on ``websocket.listen``, paths ``/ws`` and ``/api/v1/client/ws``, over
a guarded listener (:mod:`rpad.listeners`): connections per address (the forwarded address
behind a trusted proxy, attributed as the handshake is read) and in all are capped, and the
handshake must be complete within ``websocket.handshake_timeout_seconds``. A connection is
established once authenticated: no longer counted against its address. A refused handshake
(404 unknown path, 429 too many from this address) gets rpad's JSON error and its socket is
closed at once (trio-websocket would otherwise keep it until the peer hangs up). An accepted, authenticated connection becomes a
:class:`~rpad.hub.connection.Connection` with its own reader, writer and keepalive timer; its
messages are handled by the actions of :mod:`rpad.hub.actions`; what it subscribes to is
delivered by :mod:`rpad.hub.fanout`; sequence numbers, history and messages to users across
nodes are the :class:`~rpad.backend.base.Broker`'s.

Access. A bad or missing token closes with 4001; failed authentications count per address
(through the same :class:`~rpad.service.gate.Gate` as the HTTP API's, so both sides count
together), and an address over ``auth.max_failures_per_minute`` is refused (4001) for a while.
Agent tokens are refused (4003) on those paths: an agent's only read right is its own status,
which the hub does not offer per client. The third path, ``/api/v1/agent/ws``, takes agent
tokens only (4003 for any other role): agents' control channels, handed to
:class:`~rpad.hub.agent_link.AgentLinks` (when the console is set up). At most ``websocket.max_connections_per_user`` per user (4029).
Every connection is subscribed to ``system`` from the start and cannot leave it, so a
broadcast reaches everyone.

Origin. With ``websocket.allowed_origins`` set, a handshake whose ``Origin`` header is not in
the list is accepted and then closed with 1008, because a browser cannot observe the HTTP
status of a refused handshake but does see a close code. Clients that send no ``Origin`` (not
browsers) are not affected: the check protects browsers from cross-site use of their tokens.

Resource handling: the hub owns the listener and a handler nursery; :meth:`Hub.run` runs until
:meth:`Hub.aclose` (or cancellation). Shutdown stops accepting, closes every connection with
1001 and gives the handlers ``SHUTDOWN_DEADLINE_SECONDS`` before cancelling them.

Error handling: a peer that goes away (``ConnectionClosed``) ends its own connection only. A
bad client message gets ``ERROR {code, message}`` and the connection stays open. An unexpected
exception while serving one connection is a bug: it is logged with its traceback and counted,
that connection is dropped, and the other connections and the daemon carry on, because all
shared state is changed synchronously and is never left half-updated by one connection.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qs

import trio
from trio_websocket import (
    ConnectionClosed,
    Endpoint,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
)

from ..auth import bearer_token
from ..backend.base import Broker
from ..config import WebSocketConfig, parse_listen
from ..core.errors import AuthError, TooManyFailures
from ..core.jsonenc import dumps, envelope
from ..core.principal import Principal
from ..core.proxy import client_address
from ..core.times import iso
from ..core.topics import CONNECTION_ESTABLISHED, ERROR, TOPIC_SYSTEM
from ..core.validation import has_lone_surrogate
from ..listen import reuse_port_socket
from ..listeners import Conn, ConnectionGate, GuardedListener, Limits
from ..service.gate import Gate
from .actions import ACTIONS, Action
from .admin import ClusterQuestions, HubAdmin
from .codes import (
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_ORIGIN,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_MANY,
    CLOSE_UNAUTHORIZED,
    HubCounters,
    close_reason_name,
    truncate_reason,
)
from .connection import (
    CLOSE_TIMEOUT_SECONDS,
    FLOOD_CLOSE_AFTER_DROPPED,
    MESSAGES_PER_SECOND,
    Connection,
    MessageRate,
)
from .fanout import SLOW_CONSUMER_REASON, Fanout
from .outbox import Outbox

log = logging.getLogger(__name__)

WS_PATHS = ("/ws", "/api/v1/client/ws")
# trio-websocket's own handshake timeout, a backstop behind the connection gate's (which cuts
# a late handshake at websocket.handshake_timeout_seconds): a handshake the gate has cut still
# holds trio-websocket's task until then.
HANDSHAKE_BACKSTOP_SECONDS = 1.0
# Agents' control channels (rpad.hub.agent_link): agent tokens only.
AGENT_PATH = "/api/v1/agent/ws"
# How long open connections get at shutdown to receive their 1001 before they are cut.
SHUTDOWN_DEADLINE_SECONDS = 5.0


class AgentEndpoint(Protocol):
    """Where the hub hands an authenticated agent's control channel
    (:class:`rpad.hub.agent_link.AgentLinks`)."""

    def enabled(self) -> bool: ...

    def close_all(self, code: int, reason: str) -> None:
        """Begin closing every agent channel (shutdown)."""
        ...

    async def serve(self, hub: Hub, ws: WebSocketConnection, principal: Principal,
                    address: str, metadata: dict[str, Any]) -> None: ...


class Hub:
    """The WebSocket hub of this node.

    ``actions``: more client actions beside :data:`rpad.hub.actions.ACTIONS` (by name)."""

    def __init__(
        self,
        config: WebSocketConfig,
        *,
        gate: Gate,
        broker: Broker,
        fanout: Fanout,
        counters: HubCounters,
        wall_clock: Callable[[], float],
        trusted_proxies: frozenset[str] = frozenset(),
        actions: Mapping[str, Action] | None = None,
        listener_gate: ConnectionGate | None = None,
        cluster: ClusterQuestions | None = None,
        agents: AgentEndpoint | None = None,
    ) -> None:
        self.config = config
        self.gate = gate
        self.broker = broker
        self.fanout = fanout
        self.counters = counters
        self.wall_clock = wall_clock
        # Reverse proxies whose X-Forwarded-For names the real client (http.trusted_proxies).
        self.trusted_proxies = trusted_proxies
        self.actions: dict[str, Action] = {**ACTIONS, **(actions or {})}
        # Connections per address and in all, and the handshake deadline (rpad.listeners).
        self.listener_gate = listener_gate or ConnectionGate(
            "websocket", listener_limits(config), trusted_proxies)
        self.agents = agents
        self.url = ""
        self.admin = HubAdmin(fanout, broker, counters, config=lambda: self.config,
                              accepting=lambda: self._accepting, cluster=cluster)
        self._ids = itertools.count(1)
        self._ping_ids = itertools.count(1)
        self._closing = trio.Event()
        self._stopped = trio.Event()
        self._accepting = False
        self._auth_waits: set[trio.CancelScope] = set()

    @property
    def epoch(self) -> str:
        return self.broker.epoch

    def reconfigure(self, config: WebSocketConfig, trusted_proxies: frozenset[str]) -> None:
        """Ping interval, pong timeout, limits, origins and the auth timeout apply at once;
        queue sizes to new connections; history sizes to new topics."""
        self.config = config
        self.trusted_proxies = trusted_proxies
        self.listener_gate.limits = listener_limits(config)
        self.listener_gate.trusted_proxies = trusted_proxies
        self.broker.reconfigure(history_size=config.history_size)

    # -- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``websocket.listen`` until :meth:`aclose`; ``task_status.started`` gets the
        ``ws://host:port/ws`` URL once the listener is bound."""
        host, port = parse_listen(self.config.listen)
        gate = self.listener_gate
        try:
            async with trio.open_nursery() as handlers:
                async with trio.open_nursery() as acceptor:
                    if self.config.reuse_port:  # several processes share the port
                        inner = [trio.SocketListener(trio.socket.from_stdlib_socket(
                            reuse_port_socket(self.config.listen)))]
                    else:
                        inner = await trio.open_tcp_listeners(port, host=host)
                    server = WebSocketServer(
                        self._handle, [GuardedListener(i, gate) for i in inner],  # type: ignore[misc]
                        handler_nursery=handlers,
                        max_message_size=self.config.max_message_bytes,
                        connect_timeout=(self.config.handshake_timeout_seconds
                                         + HANDSHAKE_BACKSTOP_SECONDS),
                        disconnect_timeout=CLOSE_TIMEOUT_SECONDS,
                    )
                    await acceptor.start(gate.run)
                    await acceptor.start(server.run)
                    # A host name may bind several listeners (::1 and 127.0.0.1): name the first.
                    name = inner[0].socket.getsockname()
                    self.url = f"{Endpoint(name[0], name[1], False).url}{WS_PATHS[0]}"
                    self._accepting = True
                    acceptor.start_soon(self.fanout.run_flusher)
                    task_status.started(self.url)
                    await self._closing.wait()
                    self._accepting = False
                    acceptor.cancel_scope.cancel()  # stop accepting
                for scope in list(self._auth_waits):
                    scope.cancel()
                for c in list(self.fanout.connections.values()):
                    c.close(CLOSE_GOING_AWAY, "server going away")
                if self.agents is not None:
                    self.agents.close_all(CLOSE_GOING_AWAY, "server going away")
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
            remote = request.remote
        except OSError:  # ENOTCONN: the peer reset the connection during the handshake
            return
        peer = str(getattr(remote, "address", remote))
        conn = self.listener_gate.find(peer, getattr(remote, "port", 0))
        if conn is None:  # the gate cut it (its handshake was too late) or it is gone
            return
        self.listener_gate.request_started(conn)  # the handshake deadline is off
        try:
            await self._serve(request, peer, conn)
        except ConnectionClosed:
            pass  # the peer went away during the handshake or authentication
        except Exception:
            self.counters.internal_errors += 1
            log.exception("unexpected error serving a WebSocket connection; dropping it")
        finally:
            self.listener_gate.release(conn)

    async def _reject(self, request: WebSocketRequest, conn: Conn, status: int, code: str,
                      message: str) -> None:
        """Refuse the handshake with an HTTP status and rpad's JSON error body, and close the
        connection (trio-websocket leaves a rejected connection open until the peer hangs up)."""
        self.counters.rejected_handshakes += 1
        body = dumps({"error": code, "message": message, "details": []})
        try:
            await request.reject(status, extra_headers=[(b"content-type", b"application/json")],
                                 body=body.encode())
        finally:
            self.listener_gate.finish(conn)

    async def _serve(self, request: WebSocketRequest, peer: str, conn: Conn) -> None:
        path, _, query = request.path.partition("?")
        if path not in WS_PATHS and not (path == AGENT_PATH and self.agents is not None):
            await self._reject(request, conn, 404, "not_found",
                               f"no WebSocket endpoint here; use {' or '.join(WS_PATHS)}")
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        address = client_address(peer, headers.get, self.trusted_proxies)
        if address != peer and not self.listener_gate.attribute(conn, address):
            await self._reject(request, conn, 429, "too_many_connections",
                               "too many connections from this address; retry later")
            return
        ws = await request.accept()
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
        # Authenticated: no longer counted against its address, never cut to make room. An
        # agent's control channel is bounded by the fleet (presence.max_clients, at most two
        # per client), not by websocket.max_connections, which is the dashboards'.
        agent_channel = (path == AGENT_PATH and self.agents is not None
                         and principal.role == "agent")
        self.listener_gate.establish(conn, long_lived=True,
                                     outside_cap_for=principal.sub if agent_channel else None)
        if path == AGENT_PATH and self.agents is not None:
            if principal.role != "agent":
                await self._refuse(ws, CLOSE_FORBIDDEN,
                                   "only agent tokens may open an agent's control channel")
            elif not self.agents.enabled():
                await self._refuse(ws, CLOSE_FORBIDDEN,
                                   "the console is switched off on this rpad")
            else:
                self.counters.total_connections += 1
                await self.agents.serve(self, ws, principal, address, {
                    "remoteAddress": address, "path": path,
                    "userAgent": headers.get("user-agent"), "authMethod": method})
            return
        if principal.role == "agent":
            await self._refuse(ws, CLOSE_FORBIDDEN, "agent tokens cannot use the WebSocket hub")
            return
        cid = f"ws-{next(self._ids)}"
        limit = self.config.max_connections_per_user
        if not await self.broker.claim_connection(principal.sub, cid, limit):
            await self._refuse(ws, CLOSE_TOO_MANY,
                               f"too many connections for this user (limit {limit})")
            return
        c = Connection(
            id=cid, principal=principal, ws=ws,
            outbox=Outbox(self.config.queue_size, batch=batch), connected_at=self.wall_clock(),
            metadata={"remoteAddress": address, "path": path, "origin": origin,
                      "userAgent": headers.get("user-agent"), "authMethod": method},
            host=self,
        )
        c.set_expiry(principal, self.gate.leeway_seconds)
        self.fanout.add(c)
        self.counters.total_connections += 1
        self.fanout.join(c, TOPIC_SYSTEM)
        self.reply(c, CONNECTION_ESTABLISHED, {
            "connectionId": c.id, "userId": c.user_id, "role": principal.role,
            "epoch": self.epoch, "serverTime": iso(self.wall_clock()),
            "pingIntervalSeconds": self.config.ping_interval_seconds, "batch": batch,
        })
        log.debug("WebSocket %s opened: user %s (%s) from %s", c.id, c.user_id, principal.role,
                  address)
        try:
            async with trio.open_nursery() as nursery:
                c.start(nursery)
        except Exception:
            c.close(CLOSE_INTERNAL_ERROR, "internal error")
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
        try:
            self.gate.check(address)
        except TooManyFailures:
            self.counters.auth_failures += 1
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
                self.counters.auth_failures += 1
                self.gate.failed(address)
                await self._refuse(ws, CLOSE_UNAUTHORIZED,
                                   f"no authentication within {self.config.auth_timeout_seconds:g} s")
                return None
        try:
            principal = self.gate.verify(token, address, where="WebSocket ")
        except AuthError as exc:
            self.counters.auth_failures += 1
            await self._refuse(ws, CLOSE_UNAUTHORIZED, exc.message)
            return None
        return principal, method, batch

    async def _await_auth_message(self, ws: WebSocketConnection) -> tuple[str, bool] | None:
        """Read messages until ``{"action": "auth", "token", "batch"?}`` or the auth timeout;
        anything else is answered with an ERROR. Returns (token, batch)."""
        deadline = trio.current_time() + self.config.auth_timeout_seconds
        with trio.CancelScope(deadline=deadline) as scope:
            self._auth_waits.add(scope)
            rate = MessageRate()
            try:
                while True:
                    raw = await ws.get_message()
                    if not rate.allow(trio.current_time()):
                        self.counters.rate_limited += 1
                        if rate.dropped >= FLOOD_CLOSE_AFTER_DROPPED:
                            return None
                        continue
                    msg = parse_message(raw)
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
                    self.counters.errors += 1
                    await ws.send_message(envelope(ERROR, None, None, iso(self.wall_clock()),
                                                   dumps({"code": problem[0],
                                                          "message": problem[1]})))
            finally:
                self._auth_waits.discard(scope)
        return None

    async def _refuse(self, ws: WebSocketConnection, code: int, reason: str) -> None:
        self.counters.disconnections[close_reason_name(code)] += 1
        with trio.move_on_after(CLOSE_TIMEOUT_SECONDS):
            await ws.aclose(code, truncate_reason(reason))

    def _unregister(self, c: Connection) -> None:
        if c.close_code is None:  # cut without a close handshake (shutdown deadline)
            c.close(CLOSE_GOING_AWAY, "server going away")
        self.fanout.remove(c)
        assert c.close_code is not None
        reason = close_reason_name(c.close_code)
        self.counters.disconnections[reason] += 1
        log.debug("WebSocket %s of user %s closed: %s (%d)", c.id, c.user_id, reason, c.close_code)

    # -- what connections ask of the hub (ConnectionHost) --------------------------------------

    def on_close(self, c: Connection, code: int, dropped: int) -> None:
        self.fanout.leave_all(c)
        self.broker.release_connection(c.user_id, c.id)
        self.counters.dropped += dropped
        if code == CLOSE_SLOW_CONSUMER:
            self.counters.slow_consumers += 1
            self.counters.dropped += 1  # the message that did not fit
            log.warning("WebSocket %s of user %s is not reading; closed as a slow consumer",
                        c.id, c.user_id)

    def on_sent(self, c: Connection, n: int) -> None:
        self.counters.messages_sent += n

    def on_received(self, c: Connection) -> None:
        self.counters.messages_received += 1

    def on_rate_limited(self, c: Connection, *, first: bool) -> None:
        self.counters.rate_limited += 1
        if first:
            self.error(c, "rate_limited",
                       f"more than {MESSAGES_PER_SECOND:g} messages per second: this one "
                       "and the next are dropped until the rate falls")

    def mark_dirty(self, c: Connection) -> None:
        self.fanout.mark_dirty(c)

    def next_ping_payload(self) -> bytes:
        return next(self._ping_ids).to_bytes(8, "big")

    async def handle(self, c: Connection, raw: str | bytes) -> None:
        """One client message: parsed, then its action (or an ERROR)."""
        msg = parse_message(raw)
        if isinstance(msg, tuple):
            self.error(c, *msg)
            return
        action = msg.get("action")
        handler = self.actions.get(action) if isinstance(action, str) else None
        if handler is None:
            if not isinstance(action, str):
                self.error(c, "invalid_message", 'a message needs an "action" string')
            else:
                self.error(c, "unknown_action",
                           f"unknown action {action[:40]!r}; known: {', '.join(self.actions)}")
            return
        await handler(self, c, msg)

    # -- replies -------------------------------------------------------------------------------

    def reply(self, c: Connection, type_: str, data: dict[str, Any]) -> None:
        """A control message to one connection (``topic`` and ``seq`` are null)."""
        self.fanout.send(c, envelope(type_, None, None, iso(self.wall_clock()), dumps(data)))

    def error(self, c: Connection, code: str, message: str, **extra: Any) -> None:
        self.counters.errors += 1
        self.reply(c, ERROR, {"code": code, "message": message, **extra})

    def slow(self, c: Connection) -> None:
        c.close(CLOSE_SLOW_CONSUMER, SLOW_CONSUMER_REASON)


def listener_limits(config: WebSocketConfig) -> Limits:
    """The hub listener's caps: established connections are never cut to make room (at the
    cap, newcomers are refused)."""
    return Limits(max_connections=config.max_connections,
                  max_connections_per_address=config.max_connections_per_address,
                  head_timeout_seconds=config.handshake_timeout_seconds, evict=False)


def parse_message(raw: str | bytes) -> dict[str, Any] | tuple[str, str]:
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
