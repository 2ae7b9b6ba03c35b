"""Agents' control channels on the hub: ``/api/v1/agent/ws``.

An agent that its host's owner allowed to take commands (``rpad agent --allow-commands``, or
``--control-channel`` to only advertise what it can do) dials out to this path with its agent
token (the host opens no port). Only agent tokens are accepted here (4003 for any other role),
and agent tokens are still refused on the dashboard paths. The channel is a hub connection like
any other (:class:`~rpad.hub.connection.Connection`: keepalive pings, the token's expiry, a
bounded outgoing queue) with its own host, :class:`AgentLinks`, which:

- takes the agent's ``agent.hello`` (protocol version and *capabilities*: whether the host runs
  commands at all, its allowlist, the run-as user, its limits), checks it, shows the
  capabilities in the client view (``capabilities``, null while there is no channel) and
  answers ``AGENT_REGISTERED``;
- passes ``command.*`` messages to :class:`~rpad.service.commands.Commands`, which checks them
  against what this agent was asked to run and the credit it was granted;
- keeps one channel per client: a newer one replaces the older (closed with 4012), so an agent
  that reconnects after a half-open TCP connection is not locked out;
- closes the channel (4001) as soon as the client's tokens are revoked, and when the client
  is unknown to rpad (4004).

Agent channels are not user connections: they are not in the hub's user and topic maps (no
broadcast, no direct message to a user ever reaches an agent, whatever its client id), they do
not count against ``websocket.max_connections_per_user``, and they are listed by
``GET /api/v1/agents`` rather than among the dashboards' connections. Their messages are rate
limited more loosely than a dashboard's (output is paced by credit instead).

How a channel identifies itself (for proxies and limits): the path ``/api/v1/agent/ws``, an
``Authorization: Bearer`` agent token, and the ``User-Agent: rpad-agent/<version> (control
channel)`` header.

Resource handling: one :class:`AgentLink` per channel, in the hub's handler nursery; when it
ends, its commands are failed as lost (the agent kills them) within a shielded clean-up.
Error handling: a bad message is answered with ``ERROR`` (like on any hub connection); a
protocol violation (see :mod:`rpad.service.commands`) closes the channel with 4002.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

import trio
from trio_websocket import WebSocketConnection

from ..config import WebSocketConfig
from ..core.jsonenc import dumps, envelope
from ..core.principal import Principal
from ..core.times import iso
from ..core.topics import ERROR, PONG
from ..service.commands import Commands
from .codes import (
    CLOSE_AGENT_REPLACED,
    CLOSE_PROTOCOL,
    CLOSE_SLOW_CONSUMER,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNKNOWN_CLIENT,
    HubCounters,
)
from .connection import Connection, MessageRate
from .outbox import Outbox
from .server import Hub, parse_message

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
AGENT_REGISTERED = "AGENT_REGISTERED"
# Messages an agent may send per second (sustained) and in a burst; output is also bounded
# by the credit rpad grants.
AGENT_MESSAGES_PER_SECOND = 2000.0
AGENT_MESSAGE_BURST = 4000
# rpad's messages to an agent waiting to be written (COMMAND_RUN, COMMAND_CREDIT, ...).
AGENT_QUEUE_SIZE = 1024
MAX_ALLOWLIST_ENTRIES = 200
MAX_TEXT_CHARS = 200
CLEANUP_SECONDS = 5.0


def _text(value: Any, limit: int = MAX_TEXT_CHARS) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _positive(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
            and value > 0:
        return value
    return None


def read_capabilities(raw: Any) -> dict[str, Any]:
    """What an agent advertises, kept only in the shapes rpad knows (never trusted as given)."""
    caps = raw if isinstance(raw, dict) else {}
    allowlist = caps.get("allowlist")
    patterns = [p[:MAX_TEXT_CHARS] for p in allowlist[:MAX_ALLOWLIST_ENTRIES]
                if isinstance(p, str)] if isinstance(allowlist, list) else []
    return {
        "commands": caps.get("commands") is True,
        "pty": False,
        "shell": caps.get("shell") is True,
        "allowlist": patterns,
        "runAs": _text(caps.get("runAs"), 64),
        "maxTimeoutSeconds": _positive(caps.get("maxTimeoutSeconds")),
        "maxOutputBytes": _positive(caps.get("maxOutputBytes")),
        "maxConcurrent": _positive(caps.get("maxConcurrent")),
    }


class AgentLink:
    """One agent's control channel (an :class:`~rpad.service.commands.AgentPort`)."""

    def __init__(self, links: AgentLinks, c: Connection, address: str) -> None:
        self.links = links
        self.connection = c
        self.client_id = c.principal.sub
        self.address = address
        self.capabilities: dict[str, Any] = {"commands": False}
        self.registered = False
        self.agent_version: str | None = None
        self.connected_at = links.wall_clock()

    @property
    def principal(self) -> Principal:
        return self.connection.principal

    def send(self, type_: str, data: dict[str, Any]) -> bool:
        c = self.connection
        if c.close_code is not None:
            return False
        text = envelope(type_, None, None, iso(self.links.wall_clock()), dumps(data))
        if not c.outbox.offer(text):
            c.close(CLOSE_SLOW_CONSUMER, "the agent does not read rpad's messages")
            return False
        return True

    def violation(self, why: str) -> None:
        self.connection.close(CLOSE_PROTOCOL, f"protocol violation: {why}")

    def view(self) -> dict[str, Any]:
        c = self.connection
        return {"clientId": self.client_id, "connectionId": c.id,
                "connectedAt": iso(self.connected_at), "remoteAddress": self.address,
                "agentVersion": self.agent_version, "capabilities": self.capabilities,
                "lastPing": iso(c.last_ping), "lastPong": iso(c.last_pong),
                "isAlive": c.is_alive, "queued": c.queued}


class AgentLinks:
    """The control channels of this node, by client id (the hub's agent path, and the
    :class:`~rpad.service.commands.AgentDirectory` of the console and tasks)."""

    def __init__(self, *, config: WebSocketConfig, counters: HubCounters,
                 wall_clock: Callable[[], float],
                 set_capabilities: Callable[[str, dict[str, Any] | None], bool],
                 token_generation: Callable[[str], int],
                 enabled: Callable[[], bool]) -> None:
        # websocket.* (keepalive, the frame limit); the daemon replaces it on reload.
        self.config = config
        self.counters = counters
        self.wall_clock = wall_clock
        self.set_capabilities = set_capabilities
        self.token_generation = token_generation
        self.enabled = enabled
        self.commands: Commands | None = None
        self.links: dict[str, AgentLink] = {}
        self._by_connection: dict[str, AgentLink] = {}
        self._ids = itertools.count(1)
        self._ping_ids = itertools.count(1)
        self.total = 0

    # -- AgentDirectory ------------------------------------------------------------------------

    def port(self, client_id: str) -> AgentLink | None:
        link = self.links.get(client_id)
        if link is None or link.connection.close_code is not None:
            return None
        if link.principal.gen != self.token_generation(client_id):
            log.warning("control channel of %s closed: its token was revoked", client_id)
            link.connection.close(CLOSE_UNAUTHORIZED, "the agent token was revoked")
            return None
        return link

    def close_all(self, code: int, reason: str) -> None:
        for link in list(self._by_connection.values()):
            link.connection.close(code, reason)

    # -- serving a channel ---------------------------------------------------------------------

    async def serve(self, hub: Hub, ws: WebSocketConnection, principal: Principal,
                    address: str, metadata: dict[str, Any]) -> None:
        """Run one authenticated agent channel until it closes."""
        c = Connection(id=f"agent-{next(self._ids)}", principal=principal, ws=ws,
                       outbox=Outbox(AGENT_QUEUE_SIZE), connected_at=self.wall_clock(),
                       metadata=metadata, host=self,
                       rate=MessageRate(AGENT_MESSAGES_PER_SECOND, AGENT_MESSAGE_BURST))
        c.set_expiry(principal, hub.gate.leeway_seconds)
        link = AgentLink(self, c, address)
        self._by_connection[c.id] = link
        self.total += 1
        hub.reply(c, "CONNECTION_ESTABLISHED", {
            "connectionId": c.id, "userId": principal.sub, "role": principal.role,
            "epoch": hub.epoch, "serverTime": iso(self.wall_clock()),
            "pingIntervalSeconds": self.config.ping_interval_seconds, "batch": False})
        try:
            async with trio.open_nursery() as nursery:
                c.start(nursery)
        finally:
            self._by_connection.pop(c.id, None)
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + CLEANUP_SECONDS
                await self._gone(link)

    async def _gone(self, link: AgentLink) -> None:
        if self.links.get(link.client_id) is link:
            del self.links[link.client_id]
            self.set_capabilities(link.client_id, None)
            log.info("control channel of %s closed (%s)", link.client_id,
                     link.connection.close_code)
        if self.commands is not None:
            await self.commands.port_closed(link)

    async def _hello(self, link: AgentLink, msg: dict[str, Any]) -> None:
        c = link.connection
        if link.registered:
            self._error(c, "already_registered", "this channel has said hello already")
            return
        protocol = msg.get("protocol")
        if protocol != PROTOCOL_VERSION:
            self._error(c, "unsupported_protocol",
                        f"this rpad speaks control protocol {PROTOCOL_VERSION}, not {protocol!r}")
            return
        caps = read_capabilities(msg.get("capabilities"))
        if not self.set_capabilities(link.client_id, caps):
            log.warning("control channel from %s refused: rpad does not know client %s",
                        link.address, link.client_id)
            c.close(CLOSE_UNKNOWN_CLIENT, f"rpad does not know client {link.client_id}: "
                    "heartbeat first, or ask an admin to register it")
            return
        old = self.links.get(link.client_id)
        if old is not None and old is not link:
            log.warning("control channel of %s replaced by a newer one from %s", link.client_id,
                        link.address)
            old.connection.close(CLOSE_AGENT_REPLACED, "replaced by a newer control channel")
            self.links.pop(link.client_id, None)
            if self.commands is not None:
                await self.commands.port_closed(old)
        link.capabilities = caps
        link.agent_version = _text(msg.get("agentVersion"))
        link.registered = True
        self.links[link.client_id] = link
        log.info("control channel of %s from %s: %s (commands %s)", link.client_id,
                 link.address, link.agent_version,
                 "allowed" if caps["commands"] else "disabled by its owner")
        self._reply(c, AGENT_REGISTERED, {"clientId": link.client_id,
                                          "protocol": PROTOCOL_VERSION,
                                          "maxMessageBytes": self.config.max_message_bytes})

    # -- ConnectionHost ------------------------------------------------------------------------

    async def handle(self, c: Connection, raw: str | bytes) -> None:
        link = self._by_connection.get(c.id)
        if link is None:
            return
        msg = parse_message(raw)
        if isinstance(msg, tuple):
            self._error(c, *msg)
            return
        action = msg.get("action")
        if action == "agent.hello":
            await self._hello(link, msg)
        elif action == "ping":
            self._reply(c, PONG, {"serverTime": iso(self.wall_clock())})
        elif isinstance(action, str) and action.startswith("command."):
            if not link.registered:
                self._error(c, "not_registered", "say agent.hello first")
            elif self.commands is not None:
                await self.commands.from_agent(link, action, msg)
        else:
            self._error(c, "unknown_action", "an agent channel takes agent.hello, ping and "
                        "command.started/output/done/refused")

    def _reply(self, c: Connection, type_: str, data: dict[str, Any]) -> None:
        text = envelope(type_, None, None, iso(self.wall_clock()), dumps(data))
        if not c.outbox.offer(text):
            c.close(CLOSE_SLOW_CONSUMER, "the agent does not read rpad's messages")

    def _error(self, c: Connection, code: str, message: str) -> None:
        self.counters.errors += 1
        self._reply(c, ERROR, {"code": code, "message": message})

    def on_close(self, c: Connection, code: int, dropped: int) -> None:
        self.counters.dropped += dropped

    def on_sent(self, c: Connection, n: int) -> None:
        self.counters.messages_sent += n

    def on_received(self, c: Connection) -> None:
        self.counters.messages_received += 1

    def on_rate_limited(self, c: Connection, *, first: bool) -> None:
        self.counters.rate_limited += 1
        if first:
            self._error(c, "rate_limited", "too many messages; output is paced by credit")

    def mark_dirty(self, c: Connection) -> None:
        pass  # agent channels never batch

    def next_ping_payload(self) -> bytes:
        return next(self._ping_ids).to_bytes(8, "big")

    def views(self) -> list[dict[str, Any]]:
        return [link.view() for link in sorted(self.links.values(), key=lambda x: x.client_id)]
