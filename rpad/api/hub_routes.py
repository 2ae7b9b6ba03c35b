"""The HTTP side of the hub (SPEC §3): ``POST /api/v1/publish`` and the WebSocket management
API under ``/api/v1/websocket/``.

Handlers are thin: check the token, validate the body (every bad field is named, unknown
fields are refused), call the feeds and the hub's admin side, shape the JSON. Errors are the app's usual
``{"error", "message", "details"}`` bodies (see :mod:`rpad.api.errors`).

Who may do what: publishing and notifying need the service role (or admin), and reach the
built-in topics only as :mod:`rpad.core.access` allows (a service notifies into
``notifications``, nothing more); everything else needs admin, except
``GET /api/v1/websocket/health``, which is open (it reveals only counts).
"""

from __future__ import annotations

import re
from typing import Any

from quart import Quart, Response, request

from ..core.access import may_notify, may_publish_from_api
from ..core.errors import ValidationFailed
from ..core.jsonenc import dumps
from ..core.principal import Principal, require_role
from ..core.tasks import TASK_TOPIC_PREFIX, TASK_UPDATE, read_published_update
from ..core.topics import (
    NOTIFICATION_LEVELS,
    RPAD_ONLY_TOPICS,
    SYSTEM_MESSAGE,
    TOPIC_NOTIFICATIONS,
    TOPIC_RE,
    TYPE_RE,
)
from ..core.validation import Fields
from ..hub.admin import MAX_PING_USER_TIMEOUT_SECONDS, PING_USER_TIMEOUT_SECONDS
from ..hub.server import Hub
from .bodies import number_arg, request_json_object
from .context import ApiContext
from .errors import ApiError, invalid_parameter, json_response
from .openapi import ADMIN, SERVICE_UP, Answer, Param, operation
from .schemas import PING_TIMEOUT
from .security import request_principal

USER_ID_MAX_CHARS = 128
TITLE_MAX_CHARS = 200
MESSAGE_MAX_CHARS = 4000
URL_MAX_CHARS = 2048
REASON_MAX_CHARS = 200
DEFAULT_DISCONNECT_REASON = "disconnected by an administrator"
_USER_ID_RE = re.compile(r"[^\x00-\x1f]{1,128}")


class _Body(Fields):
    """A management request's body: unknown fields are refused, ``required`` fields named."""

    __slots__ = ()

    def __init__(self, data: dict[str, Any], known: tuple[str, ...]) -> None:
        super().__init__(data, "", [])
        for key in data:
            if key not in known:
                self.fail(str(key)[:64], f"is not a known field ({', '.join(known)})")

    def string(self, name: str, alias: str | None = None, *, required: bool = False,
               max_chars: int = 256, pattern: re.Pattern[str] | None = None,
               what: str = "") -> str | None:
        if required and self.data.get(name) is None:
            self.fail(name, "is required")
            return None
        return super().string(name, alias, max_chars=max_chars, pattern=pattern, what=what)

    def check(self) -> None:
        if self.errors:
            raise ValidationFailed(self.errors)


def _json_data(body: _Body, name: str = "data") -> Any:
    """Any JSON value; NaN and infinities (which Python's parser lets through) are refused."""
    value = body.data.get(name)
    try:
        dumps(value)
    except ValueError:
        body.fail(name, "must not contain NaN or Infinity")
    return value


def add_routes(app: Quart, ctx: ApiContext, hub: Hub) -> None:
    """Add the publish and WebSocket management routes to the app (before it is served)."""
    feeds, admin = ctx.feeds, hub.admin

    def principal() -> Principal:
        return request_principal(ctx)

    async def body_object() -> dict[str, Any]:
        return await request_json_object(ctx.config.http.max_body_bytes)

    def path_user(user_id: str) -> str:
        if not _USER_ID_RE.fullmatch(user_id):
            raise ValidationFailed([{"field": "userId",
                                     "message": "must be 1 to 128 printable characters"}])
        return user_id

    # -- publishing ----------------------------------------------------------------------------

    def forbidden_topic(topic: str) -> ApiError:
        if topic in RPAD_ONLY_TOPICS:
            return ApiError(403, "forbidden", f"only rpad itself publishes to the {topic} topic")
        if topic == TOPIC_NOTIFICATIONS:
            return ApiError(403, "forbidden", "only rpad and administrators publish to the "
                            "notifications topic; send a notification with "
                            "POST /api/v1/websocket/notify")
        return ApiError(403, "forbidden", f"only rpad and administrators publish to the "
                        f"{topic} topic")

    @app.post("/api/v1/publish")
    @operation("Publish an app event to a topic", tag="websocket", roles=SERVICE_UP,
               description="Subscribers of the topic get `{type, topic, seq, ts, data}`. The "
                           "topics rpad itself feeds (client_status, heartbeat, servers, "
                           "stats) refuse outside messages (403).",
               body="Publication", answer=Answer(200, "published", "Published"),
               errors=("backend_unavailable",))
    async def hub_publish() -> Response:
        who = principal()
        require_role(who, "service")
        body = _Body(await body_object(), ("topic", "type", "data"))
        topic = body.string("topic", required=True, pattern=TOPIC_RE,
                            what=f"must be a topic name matching {TOPIC_RE.pattern}")
        type_ = body.string("type", required=True, pattern=TYPE_RE,
                            what=f"must be a message type matching {TYPE_RE.pattern}")
        data = _json_data(body)
        body.check()
        assert topic is not None and type_ is not None
        if not may_publish_from_api(who, topic):
            raise forbidden_topic(topic)
        if (topic.startswith(TASK_TOPIC_PREFIX) and ctx.tasks is not None
                and ctx.tasks.owns(topic[len(TASK_TOPIC_PREFIX):])):
            raise ApiError(403, "forbidden", f"{topic} is one of rpad's own running tasks: only "
                           "rpad publishes its updates")
        seq, delivered = await feeds.publish(topic, type_, data)
        if type_ == TASK_UPDATE and topic.startswith(TASK_TOPIC_PREFIX) and ctx.tasks is not None:
            # In the documented shape, it is listed with rpad's own tasks (GET /api/v1/tasks,
            # the dashboard's Tasks view); any other data is published as it always was.
            update, _ = read_published_update(topic, data)
            if update is not None:
                ctx.tasks.record_published(update, who)
        return json_response({"topic": topic, "type": type_, "seq": seq, "delivered": delivered})

    # -- reading -------------------------------------------------------------------------------

    @app.get("/api/v1/websocket/stats")
    @operation("The hub's counters", tag="websocket", roles=ADMIN,
               answer=Answer(200, "the counters", "HubStats"), errors=("backend_unavailable",))
    async def hub_stats() -> Response:
        require_role(principal(), "admin")
        return json_response(await admin.cluster_stats())

    @app.get("/api/v1/websocket/connections")
    @operation("Every WebSocket connection", tag="websocket", roles=ADMIN,
               answer=Answer(200, "the connections", "Connections"), errors=("backend_unavailable",))
    async def hub_connections() -> Response:
        require_role(principal(), "admin")
        conns, cluster = await admin.cluster_connections()
        return json_response({"connections": conns, "total": len(conns), **cluster})

    @app.get("/api/v1/websocket/users/<user_id>/connections")
    @operation("One user's WebSocket connections", tag="websocket", roles=ADMIN,
               answer=Answer(200, "the user's connections", "UserConnections"),
               errors=("backend_unavailable",))
    async def hub_user_connections(user_id: str) -> Response:
        require_role(principal(), "admin")
        uid = path_user(user_id)
        conns, cluster = await admin.cluster_connections(uid)
        return json_response({"userId": uid, "connections": conns, "total": len(conns),
                              **cluster})

    @app.get("/api/v1/websocket/online-users")
    @operation("The users with an open connection", tag="websocket", roles=ADMIN,
               answer=Answer(200, "the users", "OnlineUsers"), errors=("backend_unavailable",))
    async def hub_online_users() -> Response:
        require_role(principal(), "admin")
        users, cluster = await admin.cluster_online_users()
        return json_response({"users": users, "total": len(users), **cluster})

    @app.get("/api/v1/websocket/health")
    @operation("The hub's health", tag="websocket", roles=None,
               answer=(Answer(200, "accepting connections", "HubHealth"),
                       Answer(503, "shutting down", "HubHealth")))
    async def hub_health() -> Response:
        body = admin.health()
        return json_response(body, 200 if body["accepting"] else 503)

    # -- acting --------------------------------------------------------------------------------

    @app.post("/api/v1/websocket/broadcast")
    @operation("Broadcast to every connection", tag="websocket", roles=ADMIN,
               description="On the system topic, which every connection holds.",
               body="BroadcastRequest", answer=Answer(200, "broadcast", "Broadcast"),
               errors=("backend_unavailable",))
    async def hub_broadcast() -> Response:
        require_role(principal(), "admin")
        body = _Body(await body_object(), ("type", "data"))
        type_ = body.string("type", pattern=TYPE_RE,
                            what=f"must be a message type matching {TYPE_RE.pattern}")
        if "data" not in body.data:
            body.fail("data", "is required")
        data = _json_data(body)
        body.check()
        type_ = type_ or SYSTEM_MESSAGE
        seq, delivered = await feeds.broadcast(type_, data)
        return json_response({"type": type_, "topic": "system", "seq": seq,
                              "delivered": delivered})

    @app.post("/api/v1/websocket/notify")
    @operation("Send a notification", tag="websocket", roles=SERVICE_UP,
               description="To every connection of one user (`userId`), to a topic (`topic`), "
                           "or else to the notifications topic.",
               body="NotifyRequest", answer=Answer(200, "sent", "Notified"),
               errors=("backend_unavailable",))
    async def hub_notify() -> Response:
        who = principal()
        require_role(who, "service")
        body = _Body(await body_object(), ("userId", "topic", "title", "message", "level",
                                           "actionUrl", "autoClose"))
        user_id = body.string("userId", max_chars=USER_ID_MAX_CHARS, pattern=_USER_ID_RE,
                              what="must be 1 to 128 printable characters")
        topic = body.string("topic", pattern=TOPIC_RE,
                            what=f"must be a topic name matching {TOPIC_RE.pattern}")
        if user_id is not None and topic is not None:
            body.fail("topic", "give userId or topic, not both")
        if topic in RPAD_ONLY_TOPICS:
            body.fail("topic", f"only rpad itself publishes to the {topic} topic")
        title = body.string("title", required=True, max_chars=TITLE_MAX_CHARS)
        message = body.string("message", required=True, max_chars=MESSAGE_MAX_CHARS)
        level = body.string("level") or "info"
        if level not in NOTIFICATION_LEVELS:
            body.fail("level", f"must be one of {', '.join(NOTIFICATION_LEVELS)}")
        action_url = body.string("actionUrl", max_chars=URL_MAX_CHARS)
        auto_close = body.data.get("autoClose")
        if auto_close is not None and (
                not isinstance(auto_close, bool | int | float)
                or (not isinstance(auto_close, bool) and not 0 <= auto_close <= 86400)):
            body.fail("autoClose", "must be true, false, or a number of seconds from 0 to 86400")
        body.check()
        assert title is not None and message is not None
        if not may_notify(who, topic):
            assert topic is not None
            raise forbidden_topic(topic)
        note, delivered = await feeds.notify(title=title, message=message, level=level,
                                     action_url=action_url, auto_close=auto_close,
                                     user_id=user_id, topic=topic)
        where: dict[str, Any] = ({"userId": user_id} if user_id is not None
                                 else {"topic": topic or "notifications"})
        return json_response({"notification": note, **where, "delivered": delivered})

    @app.post("/api/v1/websocket/users/disconnect")
    @operation("Disconnect a user", tag="websocket", roles=ADMIN,
               description="Closes every connection of the user with 4010.",
               body="DisconnectRequest", answer=Answer(200, "disconnected", "Disconnected"),
               errors=("backend_unavailable",))
    async def hub_disconnect_user() -> Response:
        require_role(principal(), "admin")
        body = _Body(await body_object(), ("userId", "reason"))
        user_id = body.string("userId", required=True, pattern=_USER_ID_RE,
                              what="must be 1 to 128 printable characters")
        reason = body.string("reason", max_chars=REASON_MAX_CHARS)
        body.check()
        assert user_id is not None
        n = await admin.disconnect_user(user_id, reason or DEFAULT_DISCONNECT_REASON)
        return json_response({"userId": user_id, "disconnected": n})

    @app.post("/api/v1/websocket/ping/<user_id>")
    @operation("Ping a user's connections", tag="websocket", roles=ADMIN,
               query=(Param("timeoutSeconds", "how long to wait for each pong", PING_TIMEOUT),),
               answer=Answer(200, "round trips", "PingResults"),
               errors=("not_connected", "backend_unavailable"))
    async def hub_ping_user(user_id: str) -> Response:
        require_role(principal(), "admin")
        uid = path_user(user_id)
        raw = request.args.get("timeoutSeconds")
        timeout = PING_USER_TIMEOUT_SECONDS
        if raw is not None:
            message = (f"must be a number of seconds above 0 and at most "
                       f"{MAX_PING_USER_TIMEOUT_SECONDS:g}")
            timeout = number_arg(raw, "timeoutSeconds", message)
            if not 0 < timeout <= MAX_PING_USER_TIMEOUT_SECONDS:
                raise invalid_parameter("timeoutSeconds", message)
        results = await admin.cluster_ping_user(uid, timeout)
        if not results:
            raise ApiError(404, "not_connected", "this user has no open WebSocket connection")
        return json_response({"userId": uid, "results": results})
