"""What a client may ask of the hub (SPEC §5): ``subscribe`` (with ``since``), ``unsubscribe``,
``ping``, ``refresh``, ``publish``. Each action is an async function ``(hub, connection,
message)``; a bad request is answered with ``ERROR {code, message}`` and the connection stays
usable. Other modules add actions by passing their own table to the hub (see
:class:`rpad.hub.server.Hub`).

Access is :mod:`rpad.core.access`; sequence numbers and history are the broker's; a state topic
(``servers``, ``stats``) sends its current state at once instead of a replay.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..backend.base import Broker
from ..core.access import may_publish_from_websocket, may_subscribe
from ..core.errors import AuthError, BackendUnavailable
from ..core.jsonenc import dumps
from ..core.times import iso
from ..core.topics import (
    PONG,
    PUBLISHED,
    SUBSCRIBED,
    TOKEN_REFRESHED,
    TOPIC_RE,
    TOPIC_SYSTEM,
    TYPE_RE,
    UNSUBSCRIBED,
)
from ..service.gate import Gate
from .codes import HubCounters
from .fanout import Fanout

if TYPE_CHECKING:
    from .connection import Connection


class Hub(Protocol):
    """What actions use of the hub that runs them (:class:`rpad.hub.server.Hub`)."""

    fanout: Fanout
    broker: Broker
    gate: Gate
    counters: HubCounters
    wall_clock: Callable[[], float]

    def reply(self, c: Connection, type_: str, data: dict[str, Any]) -> None: ...

    def error(self, c: Connection, code: str, message: str, **extra: Any) -> None: ...

    def slow(self, c: Connection) -> None: ...


Action = Callable[[Hub, "Connection", dict[str, Any]], Awaitable[None]]

MAX_SUBSCRIPTIONS_PER_CONNECTION = 100
_TOPIC_MESSAGE = "topic must be a string matching " + TOPIC_RE.pattern


def topic_field(msg: dict[str, Any]) -> str | None:
    topic = msg.get("topic")
    if isinstance(topic, str) and TOPIC_RE.fullmatch(topic):
        return topic
    return None


async def on_auth(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
    hub.error(c, "already_authenticated",
              "this connection is authenticated; use refresh to replace the token")


async def on_subscribe(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
    topic = topic_field(msg)
    if topic is None:
        hub.error(c, "invalid_topic", _TOPIC_MESSAGE)
        return
    since = msg.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int)
                              or since < 0):
        hub.error(c, "invalid_field", "since must be a non-negative integer (a seq)", topic=topic)
        return
    if not may_subscribe(c.principal, topic):
        hub.error(c, "forbidden", f"this token may not subscribe to {topic}", topic=topic)
        return
    if topic not in c.topics and len(c.topics) >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
        hub.error(c, "too_many_subscriptions",
                  f"a connection may hold at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} "
                  "subscriptions", topic=topic)
        return
    state = hub.fanout.state.get(topic)
    if state is not None:  # a state topic: its current state follows at once
        hub.fanout.join(c, topic)
        hub.reply(c, SUBSCRIBED, {"topic": topic, "seq": state.seq,
                                  "recovered": since is not None})
        if c.close_code is None:
            hub.fanout.send_state(c, topic)
        return
    replay = await hub.broker.replay(topic, since)
    if c.close_code is not None:
        return
    hub.fanout.join(c, topic)
    hub.reply(c, SUBSCRIBED, {"topic": topic, "seq": replay.seq, "recovered": replay.recovered})
    if replay.texts and not c.outbox.offer_many(replay.texts):
        hub.slow(c)


async def on_unsubscribe(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
    topic = topic_field(msg)
    if topic is None:
        hub.error(c, "invalid_topic", _TOPIC_MESSAGE)
        return
    if topic == TOPIC_SYSTEM:
        hub.error(c, "not_allowed", "every connection receives the system topic (broadcasts)",
                  topic=topic)
        return
    if topic in c.topics:
        hub.fanout.leave(c, topic)
    hub.reply(c, UNSUBSCRIBED, {"topic": topic})


async def on_ping(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
    hub.reply(c, PONG, {"serverTime": iso(hub.wall_clock())})


async def on_refresh(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
    token = msg.get("token")
    if not isinstance(token, str) or not token:
        hub.error(c, "invalid_field", "refresh needs a token: a non-empty string")
        return
    try:
        p = hub.gate.verify_only(token)
    except AuthError as exc:
        hub.counters.auth_failures += 1
        hub.error(c, "invalid_token", exc.message)
        return
    if p.sub != c.principal.sub or p.role != c.principal.role:
        hub.error(c, "forbidden", "the new token must have the same sub and role")
        return
    c.principal = p
    c.set_expiry(p, hub.gate.leeway_seconds)
    hub.reply(c, TOKEN_REFRESHED, {
        "userId": p.sub, "expiresAt": iso(p.exp) if p.exp is not None else None})


async def on_publish(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
    topic = topic_field(msg)
    if topic is None:
        hub.error(c, "invalid_topic", _TOPIC_MESSAGE)
        return
    type_ = msg.get("type")
    if not isinstance(type_, str) or not TYPE_RE.fullmatch(type_):
        hub.error(c, "invalid_field", "type must be a string matching " + TYPE_RE.pattern,
                  topic=topic)
        return
    if not may_publish_from_websocket(c.principal, topic):
        hub.error(c, "forbidden", f"this token may not publish to {topic}", topic=topic)
        return
    try:
        seq, delivered = await hub.broker.publish(topic, type_, dumps(msg.get("data")))
    except BackendUnavailable:
        hub.error(c, "backend_unavailable",
                  "the cluster's shared backend is unreachable; nothing was published; retry later",
                  topic=topic)
        return
    hub.reply(c, PUBLISHED, {"topic": topic, "seq": seq, "delivered": delivered})


ACTIONS: Mapping[str, Action] = {
    "auth": on_auth,
    "subscribe": on_subscribe,
    "unsubscribe": on_unsubscribe,
    "ping": on_ping,
    "refresh": on_refresh,
    "publish": on_publish,
}
