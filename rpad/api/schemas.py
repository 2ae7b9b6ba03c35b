"""JSON Schemas (draft 2020-12, the dialect of OpenAPI 3.1) of rpad's request bodies, answers
and WebSocket payloads: the ``components/schemas`` of the OpenAPI document
(:mod:`rpad.api.openapi`) and the ``$defs`` of the WebSocket schema (:mod:`rpad.api.wsschema`).

Limits, patterns and names come from the constants the validators and views use
(:mod:`rpad.core.validation`, :mod:`rpad.core.topics`, the routes' modules), so changing a
limit there changes the documents. Answers are closed (``additionalProperties: false``): a
field the code sends and the schema lacks fails the tests (Schemathesis over HTTP, the
WebSocket schema in tests/wsclient.py); request bodies are as open as their validators (a
heartbeat's unknown fields are ignored, a registration's refused).

Everything here is plain data built once at import; nothing does I/O.
"""

from __future__ import annotations

import re
from typing import Any

from ..core.model import OFFLINE, ONLINE, UNKNOWN
from ..core.queries import STATUSES
from ..core.topics import NOTIFICATION_LEVELS, RPAD_ONLY_TOPICS, TOPIC_RE, TYPE_RE
from ..core.validation import (
    _METRIC_ALIASES,
    CLIENT_ID_RE,
    MAX_EPOCH_SECONDS,
    MAX_METADATA_BYTES,
    MAX_TAGS,
    REPORTED_STATUS_RE,
)
from ..hub.admin import MAX_PING_USER_TIMEOUT_SECONDS
from ..service.presence import MAX_BATCH_HEARTBEATS

Schema = dict[str, Any]

# Strings rpad stores may not hold NUL (refused with 422 naming the field).
NO_NUL = "^[^\\u0000]*$"
METRIC_MAX = 1e18


def ref(name: str, base: str = "#/components/schemas/") -> Schema:
    return {"$ref": base + name}


def anchored(pattern: re.Pattern[str]) -> str:
    """A Python ``fullmatch`` pattern as a JSON Schema (ECMA 262, unanchored) pattern."""
    return f"^(?:{pattern.pattern})$"


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), *,
        closed: bool = True, **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    schema.update(extra)
    return schema


def nullable(schema: Schema) -> Schema:
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*kinds, "null"]}


def string(max_chars: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "string"}
    if max_chars is not None:
        schema["maxLength"] = max_chars
    schema.update(extra)
    return schema


def text(max_chars: int, **extra: Any) -> Schema:
    """A string rpad stores: at most ``max_chars`` characters, no NUL."""
    return string(max_chars, pattern=NO_NUL, **extra)


TIME = string(format="date-time", description="ISO 8601 UTC with milliseconds and Z",
              examples=["2026-01-01T12:00:00.000Z"])
NUMBER = {"type": "number"}
COUNT = {"type": "integer", "minimum": 0}
JSON_VALUE: Schema = {"description": "any JSON value"}
CLIENT_ID = string(128, pattern=anchored(CLIENT_ID_RE), minLength=1, examples=["robot-7"])
TOPIC = string(128, pattern=anchored(TOPIC_RE), examples=["task.42"])
TYPE = string(64, pattern=anchored(TYPE_RE), examples=["TASK_UPDATE"])
USER_ID = string(128, minLength=1, pattern="^[^\\u0000-\\u001f]*$", examples=["dash"])
EPOCH = string(description="changes when rpad restarts", examples=["5207099cca006b34"])
METADATA = {"type": "object", "description": f"any JSON object of at most {MAX_METADATA_BYTES} "
            "bytes as JSON"}
ROLE = {"enum": ["agent", "viewer", "operator", "service", "admin"]}

# The metrics an agent may report, camelCase and the snake_case alias of each.
METRICS_NAMES = tuple(camel for camel, _ in _METRIC_ALIASES)
_metric = {"type": "number", "minimum": 0, "maximum": METRIC_MAX}


def optional(props: dict[str, Schema], required: tuple[str, ...] = ()) -> dict[str, Schema]:
    """Request fields: an optional one may also be null, which means absent (as the
    validators read it)."""
    return {k: (v if k in required else {"anyOf": [v, {"type": "null"}]})
            for k, v in props.items()}


def _not_both(pairs: list[tuple[str, str]]) -> list[Schema]:
    """Each camelCase field and its snake_case alias: one or the other (both, with different
    values, is refused)."""
    return [{"not": {"required": [a, b]}} for a, b in pairs if a != b]


def _heartbeat() -> Schema:
    aliases = [("clientId", "client_id")]
    props: dict[str, Schema] = {
        "clientId": {"anyOf": [CLIENT_ID, {"type": "integer", "minimum": 0,
                                           "maximum": 10**128 - 1}],
                     "description": "the client; an integer becomes its decimal string"},
        "timestamp": {"anyOf": [TIME, {"type": "number", "minimum": 0,
                                       "maximum": MAX_EPOCH_SECONDS}],
                      "description": "the agent's clock: ISO 8601, or epoch seconds (or "
                                     "milliseconds); only used for clockSkewSeconds"},
        "status": string(32, pattern=anchored(REPORTED_STATUS_RE),
                         description="the agent's own status; offline means a clean shutdown",
                         default="online", examples=["online", "busy", "offline"]),
        "version": text(64),
        "ipAddress": text(64, description="default: the request's peer address"),
        "osType": text(64),
        "name": text(128),
        "intervalSeconds": {"type": "number", "minimum": 0.001, "maximum": 86400,
                            "description": "how often the agent beats"},
        "metrics": {
            "type": "object",
            "properties": {name: _metric for name in METRICS_NAMES},
            # snake_case aliases and names this version does not know: numbers, ignored if
            # unknown.
            "additionalProperties": _metric,
        },
        "metadata": METADATA,
    }
    for camel, snake in aliases:
        props[snake] = {**props[camel], "deprecated": True,
                        "description": f"the snake_case spelling of {camel}"}
    return {
        "type": "object",
        "description": "Unknown fields are ignored (newer agents keep working). The "
                       "snake_case spellings ip_address, os_type, interval_seconds and those "
                       "of the metrics are accepted too (not both spellings with different "
                       "values).",
        "properties": optional(props, ("clientId", "client_id")),
        # One of the two spellings of the id (both, with different values, is refused).
        "oneOf": [{"required": ["clientId"]}, {"required": ["client_id"]}],
        "examples": [{"clientId": "robot-7", "status": "online", "version": "1.0.0",
                      "intervalSeconds": 20, "metrics": {"cpuUsagePercent": 12.5}}],
    }


# What an agent's control channel advertises (rpad.hub.agent_link.read_capabilities).
CAPABILITIES = obj({
    "commands": {"type": "boolean", "description": "the host's owner allows commands"},
    "pty": {"type": "boolean"},
    "shell": {"type": "boolean", "description": "commands go to /bin/sh (no allowlist)"},
    "allowlist": {"type": "array", "items": string()},
    "runAs": nullable(string()),
    "maxTimeoutSeconds": nullable(NUMBER),
    "maxOutputBytes": nullable(NUMBER),
    "maxConcurrent": nullable(NUMBER),
}, ("commands", "pty", "shell", "allowlist", "runAs", "maxTimeoutSeconds", "maxOutputBytes",
    "maxConcurrent"), description="What the agent's control channel advertises; null: no "
                                  "channel (the console cannot reach it)")


def _client_view() -> Schema:
    return obj({
        "clientId": CLIENT_ID,
        "name": nullable(string()),
        "status": {"enum": [ONLINE, OFFLINE, UNKNOWN], "description": "rpad's view"},
        "reportedStatus": nullable(string(description="the agent's own last status")),
        "version": nullable(string()),
        "ipAddress": nullable(string()),
        "osType": nullable(string()),
        "tags": {"type": "array", "items": {"type": "string"}},
        "metadata": {"type": "object"},
        "lastHeartbeatAt": nullable(TIME),
        "onlineSince": nullable(TIME),
        "offlineSince": nullable(TIME),
        "registeredAt": TIME,
        "clockSkewSeconds": nullable(NUMBER),
        "heartbeatTimeoutSeconds": NUMBER,
        "intervalSeconds": nullable(NUMBER),
        "latestMetrics": nullable({"type": "object",
                                   "additionalProperties": {"type": "number"}}),
        "capabilities": nullable(CAPABILITIES),
    }, ("clientId", "name", "status", "reportedStatus", "version", "ipAddress", "osType", "tags",
        "metadata", "lastHeartbeatAt", "onlineSince", "offlineSince", "registeredAt",
        "clockSkewSeconds", "heartbeatTimeoutSeconds", "intervalSeconds", "latestMetrics",
        "capabilities"))


def client_view_with(extra: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    """The client view with more fields (an event's reason, its previous status)."""
    view = _client_view()
    return {**view, "properties": {**view["properties"], **extra},
            "required": [*view["required"], *required]}


HEARTBEAT_ANSWER = obj({
    "clientId": CLIENT_ID,
    "status": {"enum": [ONLINE, OFFLINE]},
    "serverTime": TIME,
    "timeoutSeconds": NUMBER,
    "nextHeartbeatInSeconds": NUMBER,
    "clockSkewSeconds": nullable(NUMBER),
}, ("clientId", "status", "serverTime", "timeoutSeconds", "nextHeartbeatInSeconds",
    "clockSkewSeconds"))

FIELD_ERROR = obj({"field": string(), "message": string()}, ("field", "message"))


def _notification() -> Schema:
    return obj({
        "id": string(),
        "title": string(),
        "message": string(),
        "level": {"enum": list(NOTIFICATION_LEVELS)},
        "actionUrl": nullable(string()),
        "autoClose": {"type": ["boolean", "number", "null"]},
        "timestamp": TIME,
        "clientId": CLIENT_ID,
        # rpad's alerts (rpad/service/alerts.py): which, and for a grouped one, whom.
        "event": string(examples=["client.offline", "clients.offline", "silence.created"]),
        "clientIds": {"type": "array", "items": CLIENT_ID},
        "count": COUNT,
        "silenceId": string(),
        "degraded": {"type": "boolean", "description": "cluster mode, a node's own notice: "
                                                       "its shared backend is unreachable "
                                                       "(true) or back (false)"},
    }, ("id", "title", "message", "level", "actionUrl", "autoClose", "timestamp"))


# A transition of a client under a silence or maintenance window (its alerts wait).
SILENCED: dict[str, Schema] = {"silenced": {"const": True}, "silencedUntil": TIME}


# Cluster mode: which nodes answered a cluster-wide view, which did not (in time).
NODE = string(description="the cluster node (cluster.node_id) an entry comes from")
CLUSTER_VIEW = {
    "nodes": {"type": "array", "items": NODE,
              "description": "cluster mode: the nodes that answered"},
    "unreachableNodes": {"type": "array", "items": NODE,
                         "description": "cluster mode: live nodes that did not answer in time"},
}


def _hub_stats() -> Schema:
    counts = {"type": "object", "additionalProperties": COUNT}
    return obj({
        "epoch": EPOCH,
        **{name: COUNT for name in (
            "totalConnections", "activeConnections", "activeUsers", "messagesSent",
            "messagesReceived", "messagesPublished", "errors", "internalErrors", "authFailures",
            "rejectedHandshakes", "slowConsumers", "rateLimitedMessages", "conflatedMessages",
            "droppedMessages", "serverListPushes", "serverListBuilds", "queueSize",
            "historySize")},
        "disconnections": {**counts, "description": "closed connections by reason"},
        "subscribersPerTopic": counts,
        "topics": {**COUNT, "description": "topics that have had messages"},
        "node": NODE,
        "perNode": {"type": "object", "additionalProperties": {"type": "object"},
                    "description": "cluster mode: each node's own counters (the others are "
                                   "sums over the nodes)"},
        **CLUSTER_VIEW,
    }, ("epoch", "totalConnections", "activeConnections", "activeUsers", "messagesSent",
        "messagesReceived", "messagesPublished", "disconnections", "errors", "subscribersPerTopic",
        "topics"))


HUB_HEALTH = obj({
    "status": {"enum": ["ok", "stopping"]},
    "accepting": {"type": "boolean"},
    "activeConnections": COUNT,
    "epoch": EPOCH,
}, ("status", "accepting", "activeConnections", "epoch"))


def _connection() -> Schema:
    return obj({
        "connectionId": string(),
        "userId": USER_ID,
        "role": ROLE,
        "connectedAt": TIME,
        "lastPing": nullable(TIME),
        "lastPong": nullable(TIME),
        "isAlive": {"type": "boolean"},
        "rttMs": nullable(NUMBER),
        "topics": {"type": "array", "items": TOPIC},
        "queued": COUNT,
        "messagesSent": COUNT,
        "messagesReceived": COUNT,
        "metadata": obj({
            "remoteAddress": string(), "path": string(), "origin": nullable(string()),
            "userAgent": nullable(string()), "authMethod": {"enum": ["query", "header",
                                                                      "message"]},
        }),
        "node": NODE,
    }, ("connectionId", "userId", "role", "connectedAt", "isAlive", "topics", "queued",
        "metadata"))


def _connections(extra: dict[str, Schema] | None = None) -> Schema:
    props = {**(extra or {}), "connections": {"type": "array", "items": ref("Connection")},
             "total": COUNT}
    return obj({**props, **CLUSTER_VIEW}, tuple(props))


def _batch_result() -> Schema:
    ok = obj({"index": COUNT, "ok": {"const": True},
              **HEARTBEAT_ANSWER["properties"]},
             ("index", "ok", *HEARTBEAT_ANSWER["required"]))
    refused = obj({
        "index": COUNT, "ok": {"const": False}, "clientId": CLIENT_ID,
        "error": {"enum": ["validation_failed", "forbidden", "rate_limited", "unknown_client",
                           "fleet_full", "too_many_registrations"]},
        "message": string(), "details": {"type": "array", "items": FIELD_ERROR},
        "retryAfterSeconds": NUMBER,
    }, ("index", "ok", "error", "message"))
    return {"oneOf": [ok, refused]}


def _availability() -> Schema:
    seconds = {"type": "number", "minimum": 0}
    return obj({
        "percent": nullable({"type": "number", "minimum": 0, "maximum": 100,
                             "description": "online / (online + offline); null when neither"}),
        "onlineSeconds": seconds, "offlineSeconds": seconds,
        "unknownSeconds": {**seconds, "description": "before the first known status"},
        "rpadDownSeconds": {**seconds, "description": "rpad itself was down: not counted"},
        "graceSeconds": {**seconds, "description": "rpad's start-up grace: not counted"},
    }, ("percent", "onlineSeconds", "offlineSeconds", "unknownSeconds", "rpadDownSeconds",
        "graceSeconds"))


def _uptime_windows() -> Schema:
    return obj({w: ref("Availability") for w in ("24h", "7d", "30d")}, ("24h", "7d", "30d"))


def _client_metrics() -> Schema:
    values = {"type": "array", "items": nullable(NUMBER)}
    stats = obj({"min": values, "avg": values, "max": values}, ("min", "avg", "max"))
    return obj({
        "clientId": CLIENT_ID, "from": TIME, "to": TIME,
        "tier": {"enum": ["raw", "1m", "15m", "1h"]},
        "tierStepSeconds": {"enum": [0, 60, 900, 3600]},
        "step": {"type": "integer", "minimum": 1},
        "start": {"type": "integer", "description": "epoch seconds of the first bucket"},
        "startAt": TIME,
        "points": COUNT,
        "count": {"type": "array", "items": COUNT,
                  "description": "samples in each bucket (0: no data)"},
        "metrics": obj({name: stats for name, _ in _METRIC_ALIASES}),
    }, ("clientId", "from", "to", "tier", "tierStepSeconds", "step", "start", "startAt",
        "points", "count", "metrics"))


def _client_uptime() -> Schema:
    states = ["online", "offline", "unknown", "rpad_down", "grace"]
    return obj({
        "clientId": CLIENT_ID, "serverTime": TIME,
        "uptime": _uptime_windows(),
        "rpadPeriods": {"type": "array", "items": obj({
            "start": TIME, "end": TIME, "kind": {"enum": ["rpad_down", "grace"]}},
            ("start", "end", "kind"))},
        "timeline": obj({
            "window": {"enum": ["1h", "24h", "7d", "30d"]},
            "segments": {"type": "array", "items": obj({
                "start": TIME, "end": TIME, "state": {"enum": states},
                "reason": nullable(string())}, ("start", "end", "state", "reason"))},
        }, ("window", "segments")),
    }, ("clientId", "serverTime", "uptime", "rpadPeriods", "timeline"))


def components() -> dict[str, Schema]:
    """The named schemas, for ``components/schemas``."""
    return {
        "Availability": _availability(),
        "ClientDetail": client_view_with({"uptime": nullable(_uptime_windows())}),
        "ClientMetrics": _client_metrics(),
        "ClientUptime": _client_uptime(),
        "Error": obj({
            "error": string(description="a code for programs (see each response)"),
            "message": string(description="a sentence for people"),
            "details": {"type": "array", "items": FIELD_ERROR,
                        "description": "for 422: each bad field by its camelCase path"},
        }, ("error", "message", "details")),
        "ClientView": _client_view(),
        "Heartbeat": _heartbeat(),
        "HeartbeatAnswer": HEARTBEAT_ANSWER,
        "HeartbeatBatch": obj({"heartbeats": {
            "type": "array", "items": ref("Heartbeat"), "maxItems": MAX_BATCH_HEARTBEATS}},
            ("heartbeats",), closed=False),
        "HeartbeatBatchAnswer": obj({
            "accepted": COUNT, "rejected": COUNT,
            "results": {"type": "array", "items": _batch_result()},
        }, ("accepted", "rejected", "results")),
        "ClientPage": obj({
            "clients": {"type": "array", "items": ref("ClientView")},
            "total": COUNT, "limit": COUNT, "offset": COUNT,
            "counts": obj({s: COUNT for s in STATUSES}, STATUSES),
        }, ("clients", "total", "limit", "offset", "counts")),
        "Registration": {
            **obj(optional({
                "clientId": {"anyOf": [CLIENT_ID, {"type": "integer", "minimum": 0,
                                                   "maximum": 10**128 - 1}]},
                "client_id": {"anyOf": [CLIENT_ID, {"type": "integer", "minimum": 0,
                                                    "maximum": 10**128 - 1}], "deprecated": True},
                "name": text(128),
                "tags": {"type": "array", "maxItems": MAX_TAGS, "items": string(
                    64, minLength=1, pattern="^[^\\u0000-\\u001f]*$")},
                "heartbeatTimeoutSeconds": {"type": "number", "minimum": 1,
                                            "maximum": 30 * 86400},
                "heartbeat_timeout_seconds": {"type": "number", "minimum": 1,
                                              "maximum": 30 * 86400, "deprecated": True},
                "metadata": METADATA,
            }, ("clientId", "client_id"))),
            "description": "Unknown fields are refused.",
            "anyOf": [{"required": ["clientId"]}, {"required": ["client_id"]}],
            "allOf": _not_both([("clientId", "client_id"),
                                ("heartbeatTimeoutSeconds", "heartbeat_timeout_seconds")]),
            "examples": [{"clientId": "robot-7", "name": "Robot 7", "tags": ["line-1"],
                          "heartbeatTimeoutSeconds": 90}],
        },
        "Removed": obj({"removed": {"const": True}, "client": client_view_with(
            {"reason": {"const": "removed"}}, ("reason",))}, ("removed", "client")),
        "StatusHistory": obj({
            "clientId": CLIENT_ID,
            "events": {"type": "array", "items": obj({
                "at": TIME, "status": {"enum": [ONLINE, OFFLINE, UNKNOWN, "removed"]},
                "reason": nullable(string())}, ("at", "status", "reason"))},
        }, ("clientId", "events")),
        "TokenRequest": obj(optional({"ttl": string(
            examples=["30d", "never"], pattern="^(?:never|[0-9]+(?:[.][0-9]+)?[smhdw]?)$",
            description="90s, 15m, 1h, 30d (at most 10 years) or never; default never")})),
        "AgentToken": obj({"clientId": CLIENT_ID, "token": string(), "generation": COUNT,
                           "expiresAt": nullable(TIME)},
                          ("clientId", "token", "generation", "expiresAt")),
        "Revoked": obj({"clientId": CLIENT_ID, "revoked": {"const": True},
                        "generation": COUNT}, ("clientId", "revoked", "generation")),
        "Publication": obj({"topic": TOPIC, "type": TYPE, "data": JSON_VALUE},
                           ("topic", "type")),
        "Published": obj({"topic": TOPIC, "type": TYPE, "seq": COUNT, "delivered": COUNT},
                         ("topic", "type", "seq", "delivered")),
        "Notification": _notification(),
        "NotifyRequest": {**obj(optional({
            "userId": USER_ID,
            "topic": {**TOPIC, "not": {"enum": sorted(RPAD_ONLY_TOPICS)}},
            "title": text(200), "message": text(4000),
            "level": {"enum": list(NOTIFICATION_LEVELS), "default": "info"},
            "actionUrl": text(2048),
            "autoClose": {"anyOf": [{"type": "boolean"},
                                    {"type": "number", "minimum": 0, "maximum": 86400}]},
        }, ("title", "message")), ("title", "message")),
            "not": {"required": ["userId", "topic"], "properties": {
                "userId": {"type": "string"}, "topic": {"type": "string"}}},
            "description": "userId or topic, not both."},
        "Notified": {"oneOf": [
            obj({"notification": ref("Notification"), "userId": USER_ID, "delivered": COUNT},
                ("notification", "userId", "delivered")),
            obj({"notification": ref("Notification"), "topic": TOPIC, "delivered": COUNT},
                ("notification", "topic", "delivered"))]},
        "BroadcastRequest": obj(optional({"type": TYPE, "data": JSON_VALUE}, ("data",)),
                                ("data",)),
        "Broadcast": obj({"type": TYPE, "topic": {"const": "system"}, "seq": COUNT,
                          "delivered": COUNT}, ("type", "topic", "seq", "delivered")),
        "HubStats": _hub_stats(),
        "Connection": _connection(),
        "Connections": _connections(),
        "UserConnections": _connections({"userId": USER_ID}),
        "OnlineUsers": obj({
            "users": {"type": "array", "items": obj({
                "userId": USER_ID, "connections": COUNT,
                "nodes": {"type": "object", "additionalProperties": COUNT,
                          "description": "cluster mode: connections per node"}},
                ("userId", "connections"))},
            "total": COUNT, **CLUSTER_VIEW}, ("users", "total")),
        "DisconnectRequest": obj(optional({"userId": USER_ID, "reason": text(200)}, ("userId",)),
                                 ("userId",)),
        "Disconnected": obj({"userId": USER_ID, "disconnected": COUNT},
                            ("userId", "disconnected")),
        "PingResults": obj({
            "userId": USER_ID,
            "results": {"type": "array", "items": obj({
                "connectionId": string(), "ok": {"type": "boolean"}, "rttMs": nullable(NUMBER),
                "error": {"enum": ["closed", "timeout"]}, "node": NODE},
                ("connectionId", "ok", "rttMs"))},
        }, ("userId", "results")),
        "HubHealth": HUB_HEALTH,
        "Health": obj({
            "status": {"const": "ok"}, "epoch": EPOCH, "uptimeSeconds": NUMBER,
            "clients": COUNT, "online": COUNT, "serverTime": TIME, "websocket": ref("HubHealth"),
            "cluster": obj({
                "backend": {"const": "redis"}, "node": NODE,
                "redis": {"enum": ["up", "unreachable"]}, "redisVersion": string(),
                "stale": {"type": "boolean",
                          "description": "true while Redis is unreachable: the reads of this "
                                         "node are its last view"},
                "staleSeconds": nullable(NUMBER),
                "durability": {"enum": ["strict", "relaxed"]},
                "durable": {"type": "boolean",
                            "description": "Redis has appendonly yes and appendfsync always"},
                "sweepLeaseHolder": nullable(NODE), "epoch": nullable(EPOCH),
            }, ("backend", "node", "redis", "stale", "durability", "durable"),
                description="cluster mode only"),
        }, ("status", "epoch", "uptimeSeconds", "clients", "online", "serverTime")),
        "DashboardConfig": obj({"wsUrl": nullable(string()), "version": string()},
                               ("wsUrl", "version")),
    }


PING_TIMEOUT = {"type": "number", "exclusiveMinimum": 0,
                "maximum": MAX_PING_USER_TIMEOUT_SECONDS, "default": 5}
