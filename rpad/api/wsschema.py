"""The WebSocket protocol as one JSON Schema (draft 2020-12): every action a client may send
(``$defs/ClientMessage``) and every message the hub sends (``$defs/ServerMessage``), each with
its ``data``.

Messages on the topics rpad feeds (``client_status``, ``heartbeat``, ``servers``, ``stats``),
the control messages (``topic`` null) and ``NOTIFICATION`` are described exactly, and their
``data`` is closed: a field or a type the hub sends and this schema lacks fails the end-to-end
tests, which validate every message they receive (tests/wsclient.py). Messages on the other
topics (``system``, ``notifications``, app topics such as ``task.42``) carry whatever their
publisher sent.

Served (no token) at ``GET /api/v1/websocket/schema.json``. Plain data, built once.
"""

from __future__ import annotations

from typing import Any

from ..core import model
from ..core.topics import (
    CONNECTION_ESTABLISHED,
    ERROR,
    NOTIFICATION,
    PONG,
    PUBLISHED,
    SERVER_LIST,
    SERVER_LIST_DELTA,
    SERVER_WINDOW,
    STATS_UPDATE,
    SUBSCRIBED,
    SYSTEM_MESSAGE,
    TOKEN_REFRESHED,
    TOPIC_CLIENT_STATUS,
    TOPIC_HEARTBEAT,
    TOPIC_NOTIFICATIONS,
    TOPIC_SERVERS,
    TOPIC_STATS,
    TOPIC_SYSTEM,
    UNSUBSCRIBED,
)
from ..core.window import FILTERS, MAX_LIMIT, MAX_OFFSET, MAX_Q_CHARS, SORT_KEYS
from . import console_schemas
from . import schemas as S

SCHEMA_PATH = "/api/v1/websocket/schema.json"
DEFS = "#/$defs/"
# Every code an ERROR message carries (rpad.hub.server, rpad.hub.actions).
ERROR_CODES = ("invalid_json", "invalid_message", "unknown_action", "invalid_topic",
               "invalid_field", "forbidden", "not_allowed", "too_many_subscriptions",
               "invalid_token", "already_authenticated", "unauthorized", "rate_limited",
               # on an agent's control channel (rpad.hub.agent_link)
               "already_registered", "unsupported_protocol", "not_registered")
# Topics whose every message is rpad's own, described exactly.
RPAD_TOPICS = (TOPIC_CLIENT_STATUS, TOPIC_HEARTBEAT, TOPIC_SERVERS, TOPIC_STATS)


# presence.max_clients, with the client list (the dashboard warns when the fleet nears it).
_MAX_CLIENTS = {"type": "integer", "minimum": 1,
                "description": "presence.max_clients: new clients beyond it are refused"}


def _view() -> S.Schema:
    return S.obj({
        "filter": {"enum": list(FILTERS), "default": "all"},
        "q": S.nullable(S.string(MAX_Q_CHARS, description="a substring of the id, name, IP "
                                                          "address, version or a tag")),
        "tag": S.nullable(S.string(64, minLength=1)),
        "sort": {"enum": [p + k for k in SORT_KEYS for p in ("", "-")], "default": "status",
                 "description": "- in front: descending"},
        "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
    })


def _d(name: str) -> S.Schema:
    return S.ref(name, DEFS)


def _action(name: str, description: str, fields: dict[str, S.Schema],
            required: tuple[str, ...] = ()) -> S.Schema:
    return S.obj({"action": {"const": name}, **fields}, ("action", *required), closed=False,
                 description=description + " Other fields are ignored.")


def _message(type_: S.Schema, topic: S.Schema, data: S.Schema, description: str, *,
             seq_minimum: int | None = 1) -> S.Schema:
    seq: S.Schema = ({"type": "null"} if seq_minimum is None
                     else {"type": "integer", "minimum": seq_minimum})
    return S.obj({"type": type_, "topic": topic, "seq": seq, "ts": S.TIME, "data": data},
                 ("type", "topic", "seq", "ts", "data"), description=description)


def _control(type_: str, data: S.Schema, description: str) -> S.Schema:
    return _message({"const": type_}, {"type": "null"}, data, description, seq_minimum=None)


def build_ws_schema() -> dict[str, Any]:
    statuses = {"enum": [model.ONLINE, model.OFFLINE, model.UNKNOWN]}
    defs: dict[str, S.Schema] = {
        # -- client -> server --------------------------------------------------------------
        "auth": _action("auth", "The first message, when the token is not in the URL or an "
                                "Authorization header.",
                        {"token": S.string(minLength=1), "batch": {"type": "boolean"}},
                        ("token",)),
        "subscribe": _action("subscribe", "Subscribe; with since (the last seq seen), also "
                                          "get what was missed. On servers, a view asks for "
                                          "one page of the fleet (SERVER_WINDOW).",
                             {"topic": S.TOPIC, "since": S.COUNT, "view": _view()},
                             ("topic",)),
        "unsubscribe": _action("unsubscribe", "Leave a topic (not system).", {"topic": S.TOPIC},
                               ("topic",)),
        "ping": _action("ping", "Answered with PONG.", {}),
        "refresh": _action("refresh", "A new token (same sub and role) before the old one "
                                      "expires.", {"token": S.string(minLength=1)}, ("token",)),
        "publish": _action("publish", "Publish to a topic the token's publish claim allows.",
                           {"topic": S.TOPIC, "type": S.TYPE, "data": S.JSON_VALUE},
                           ("topic", "type")),
        # -- server -> client: control messages --------------------------------------------
        CONNECTION_ESTABLISHED: _control(CONNECTION_ESTABLISHED, S.obj({
            "connectionId": S.string(), "userId": S.USER_ID, "role": S.ROLE, "epoch": S.EPOCH,
            "serverTime": S.TIME, "pingIntervalSeconds": S.NUMBER, "batch": {"type": "boolean"},
        }, ("connectionId", "userId", "role", "epoch", "serverTime", "pingIntervalSeconds",
            "batch")), "The connection is authenticated."),
        SUBSCRIBED: _control(SUBSCRIBED, S.obj({
            "topic": S.TOPIC, "seq": S.COUNT, "recovered": {"type": "boolean"},
            "view": _view()},
            ("topic", "seq", "recovered")), "Subscribed; missed messages follow."),
        UNSUBSCRIBED: _control(UNSUBSCRIBED, S.obj({"topic": S.TOPIC}, ("topic",)),
                               "Unsubscribed."),
        PONG: _control(PONG, S.obj({"serverTime": S.TIME}, ("serverTime",)), "Answers ping."),
        TOKEN_REFRESHED: _control(TOKEN_REFRESHED, S.obj({
            "userId": S.USER_ID, "expiresAt": S.nullable(S.TIME)}, ("userId", "expiresAt")),
            "Answers refresh."),
        PUBLISHED: _control(PUBLISHED, S.obj({
            "topic": S.TOPIC, "seq": S.COUNT, "delivered": S.COUNT},
            ("topic", "seq", "delivered")), "Answers publish."),
        ERROR: _control(ERROR, S.obj({
            "code": {"enum": list(ERROR_CODES)}, "message": S.string(), "topic": S.TOPIC,
            "details": {"type": "array", "items": S.FIELD_ERROR,
                        "description": "invalid_field of a view: each bad field"}},
            ("code", "message")), "A bad action; the connection stays open."),
        "NOTIFICATION.direct": _control(NOTIFICATION, _d("Notification"),
                                        "A notification to this user's connections."),
        # -- server -> client: rpad's topics --------------------------------------------------
        model.CLIENT_CONNECTED: _message(
            {"const": model.CLIENT_CONNECTED}, {"const": TOPIC_CLIENT_STATUS},
            S.client_view_with({"reason": {"const": model.REASON_HEARTBEAT},
                                 "previousStatus": statuses, **S.SILENCED},
                                ("reason", "previousStatus")),
            "A client went online."),
        model.CLIENT_DISCONNECTED: _message(
            {"const": model.CLIENT_DISCONNECTED}, {"const": TOPIC_CLIENT_STATUS},
            S.client_view_with({"reason": {"enum": [model.REASON_TIMEOUT,
                                                     model.REASON_SHUTDOWN]},
                                 "previousStatus": statuses, **S.SILENCED},
                                ("reason", "previousStatus")),
            "A client went offline."),
        model.CLIENT_STATUS_UPDATE: _message(
            {"const": model.CLIENT_STATUS_UPDATE}, {"const": TOPIC_CLIENT_STATUS},
            _d("ClientView"), "A client's reported status, version or registration changed."),
        model.CLIENT_REMOVED: _message(
            {"const": model.CLIENT_REMOVED}, {"const": TOPIC_CLIENT_STATUS},
            S.client_view_with({"reason": {"const": model.REASON_REMOVED}}, ("reason",)),
            "A client was removed."),
        model.HEARTBEAT_RECEIVED: _message(
            {"const": model.HEARTBEAT_RECEIVED}, {"const": TOPIC_HEARTBEAT}, S.obj({
                "clientId": S.CLIENT_ID, "receivedAt": S.TIME,
                "reportedStatus": S.nullable(S.string()),
                "latestMetrics": S.nullable({"type": "object",
                                             "additionalProperties": {"type": "number"}})},
                ("clientId", "receivedAt", "reportedStatus", "latestMetrics")),
            "A heartbeat was accepted."),
        SERVER_LIST: _message(
            {"const": SERVER_LIST}, {"const": TOPIC_SERVERS},
            S.obj({"servers": {"type": "array", "items": _d("ClientView")},
                   "maxClients": _MAX_CLIENTS}, ("servers",)),
            "The whole client list, and the fleet's cap.", seq_minimum=0),
        SERVER_LIST_DELTA: _message(
            {"const": SERVER_LIST_DELTA}, {"const": TOPIC_SERVERS},
            S.obj({"changed": {"type": "array", "items": _d("ClientView")},
                   "removed": {"type": "array", "items": S.CLIENT_ID},
                   "maxClients": _MAX_CLIENTS},
                  ("changed", "removed")),
            "What changed since the previous push (push.mode = delta).", seq_minimum=0),
        SERVER_WINDOW: _message(
            {"const": SERVER_WINDOW}, {"const": TOPIC_SERVERS},
            S.obj({"view": _view(), "counts": S.obj(
                {k: S.COUNT for k in ("total", "online", "offline", "unknown", "matching")},
                ("total", "online", "offline", "unknown", "matching")),
                "servers": {"type": "array", "items": _d("ClientView"),
                            "maxItems": MAX_LIMIT},
                "maxClients": _MAX_CLIENTS},
                ("view", "counts", "servers")),
            "A windowed subscription's page, sent when it changed.", seq_minimum=0),
        STATS_UPDATE: _message({"const": STATS_UPDATE}, {"const": TOPIC_STATS}, _d("HubStats"),
                               "The hub's counters (admins).", seq_minimum=0),
        "SYSTEM_MESSAGE.node": _message(
            {"const": SYSTEM_MESSAGE}, {"const": TOPIC_SYSTEM}, _d("Notification"),
            "Cluster mode: this node's own notice to its connections that its shared backend "
            "became unreachable (data.degraded true) or is back (false). Outside the topic's "
            "sequence, so seq is null.", seq_minimum=None),
                "NOTIFICATION.topic": _message({"const": NOTIFICATION}, {"const": TOPIC_NOTIFICATIONS},
                                       _d("Notification"), "A notification."),
        # -- server -> client: everything else that is published ---------------------------
        "published": {
            **_message(S.TYPE, S.TOPIC, S.JSON_VALUE,
                       "A message on system (broadcasts), notifications or an app topic, "
                       "with its publisher's type and data."),
            "not": {"anyOf": [
                {"properties": {"topic": {"enum": list(RPAD_TOPICS)}}},
                {"properties": {"topic": {"const": TOPIC_NOTIFICATIONS},
                                "type": {"const": NOTIFICATION}}}]},
        },
    }
    # The console (rpad.api.console_schemas): terminal.* and their answers, task updates to
    # their creator, and the agents' control channels (/api/v1/agent/ws).
    console_actions = console_schemas.ws_actions(_action)
    agent_actions, agent_messages = console_schemas.ws_agent_messages(_control, _action)
    defs.update(console_actions)
    defs.update(agent_actions)
    defs.update(console_schemas.ws_messages(_control))
    defs.update(agent_messages)
    actions = ("auth", "subscribe", "unsubscribe", "ping", "refresh", "publish",
               *console_actions, *agent_actions)
    components = S.components()
    for name in ("ClientView", "Notification", "HubStats"):
        defs[name] = components[name]
    # Inside $defs, references to other named schemas point at $defs too.
    text = _retarget(defs)
    text["ClientMessage"] = {"oneOf": [_d(a) for a in actions]}
    text["ServerMessage"] = {"oneOf": [_d(n) for n in defs
                                       if n not in actions and n not in components]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "rpad WebSocket protocol",
        "description": (
            "One JSON object per text frame (with batching asked for, several server messages "
            "per frame, one per line). Client messages: $defs/ClientMessage. Server messages: "
            "$defs/ServerMessage, all in one envelope {type, topic, seq, ts, data}; seq counts "
            "a topic's messages (null for control messages and messages to one user)."),
        "$defs": text,
        "oneOf": [_d("ClientMessage"), _d("ServerMessage")],
    }


def _retarget(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/components/schemas/"):
                out[k] = DEFS + v.removeprefix("#/components/schemas/")
            else:
                out[k] = _retarget(v)
        return out
    if isinstance(value, list):
        return [_retarget(v) for v in value]
    return value
