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

from ..auth import MAX_TTL_SECONDS, TTL_UNITS
from ..core.model import OFFLINE, ONLINE, UNKNOWN
from ..core.queries import STATUSES
from ..core.topics import NOTIFICATION_LEVELS, RPAD_ONLY_TOPICS, TOPIC_RE, TYPE_RE
from ..core.validation import (
    _METRIC_ALIASES,
    CLIENT_ID_RE,
    MAX_EPOCH_SECONDS,
    MAX_INTEGER_ID,
    MAX_METADATA_BYTES,
    MAX_TAGS,
    METRIC_MAX,
    REPORTED_STATUS_RE,
)
from ..hub.admin import MAX_PING_USER_TIMEOUT_SECONDS
from ..service.presence import MAX_BATCH_HEARTBEATS

Schema = dict[str, Any]

# Strings rpad stores may not hold NUL (refused with 422 naming the field).
NO_NUL = "^[^\\u0000]*$"


def _below(limit: int) -> str:
    """A regex of the positive integers below ``limit`` written without leading zeros."""
    digits = str(limit)
    branches = []
    if len(digits) > 1:
        branches.append(f"[1-9][0-9]{{0,{len(digits) - 2}}}")
    for i, d in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(d) > low:
            rest = len(digits) - i - 1
            branches.append(f"{digits[:i]}[{low}-{int(d) - 1}]" + (f"[0-9]{{{rest}}}" if rest
                                                                    else ""))
    return "|".join(branches)


def decimal_in(limit: int) -> str:
    """A regex of the decimals (``[0-9]+`` with an optional ``.[0-9]+``) whose value is more
    than 0 and at most ``limit``, exactly."""
    below = _below(limit)
    branches = [f"0*(?:{below})(?:[.][0-9]+)?"] if below else []
    return "|".join([*branches, f"0*{limit}(?:[.]0+)?", "0+[.][0-9]*[1-9][0-9]*"])


def ttl_pattern() -> str:
    """What :func:`rpad.auth.parse_ttl` accepts, as one pattern: ``never``, or a decimal and a
    unit within (0, MAX_TTL_SECONDS]."""
    by_unit = [f"(?:{decimal_in(MAX_TTL_SECONDS // seconds)}){unit}"
               for unit, seconds in TTL_UNITS.items()]
    return "^(?:never|" + "|".join(by_unit) + ")$"


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


# What str.strip() strips (the validators' test of a blank string), as a character class.
PY_SPACE = "".join(f"\\u{c:04x}" for c in range(0x10000) if chr(c).isspace())
# A string with something in it besides whitespace (as Python reads whitespace).
NOT_BLANK = f"[^{PY_SPACE}]"


def not_blank(max_chars: int, **extra: Any) -> Schema:
    """A string rpad stores that must say something: at most ``max_chars`` characters, no NUL,
    not only whitespace (as str.strip() reads it)."""
    return string(max_chars, pattern=f"^[^\\u0000]*[^{PY_SPACE}\\u0000][^\\u0000]*$", **extra)


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
NULL: Schema = {"type": "null"}


def optional(props: dict[str, Schema], required: tuple[str, ...] = ()) -> dict[str, Schema]:
    """Request fields: an optional one may also be null, which means absent (as the
    validators read it)."""
    return {k: (v if k in required else {"anyOf": [v, {"type": "null"}]})
            for k, v in props.items()}


def one_spelling(pairs: list[tuple[str, str]]) -> list[Schema]:
    """Each camelCase field and its snake_case alias: not both given, whatever the values
    (the validators' rule, :meth:`rpad.core.validation.Fields.get`; null means absent).
    Written without ``not``, which Schemathesis cannot generate from."""
    return [{"anyOf": [{"properties": {a: NULL}}, {"properties": {b: NULL}}]}
            for a, b in pairs if a != b]


def required_spelling(camel: str, snake: str, schema: Schema) -> Schema:
    """A required field that has a snake_case alias: exactly one of the two given."""
    return {"anyOf": [{"required": [camel], "properties": {camel: schema, snake: NULL}},
                      {"required": [snake], "properties": {snake: schema, camel: NULL}}]}


def with_aliases(props: dict[str, Schema], pairs: list[tuple[str, str]]) -> dict[str, Schema]:
    """``props`` and, after them, the snake_case alias of each pair, deprecated."""
    out = dict(props)
    for camel, snake in pairs:
        if snake != camel:
            out[snake] = {**props[camel], "deprecated": True,
                          "description": f"the snake_case spelling of {camel}"}
    return out


CLIENT_ID_IN = {"anyOf": [CLIENT_ID, {"type": "integer", "minimum": 0,
                                      "maximum": MAX_INTEGER_ID}],
                "description": "the client; an integer becomes its decimal string"}
_ID_PAIR = ("clientId", "client_id")


def _heartbeat() -> Schema:
    pairs = [_ID_PAIR, ("ipAddress", "ip_address"), ("osType", "os_type"),
             ("intervalSeconds", "interval_seconds")]
    props: dict[str, Schema] = {
        "clientId": CLIENT_ID_IN,
        # Epoch numbers over 1e11 are read as milliseconds.
        "timestamp": {"anyOf": [TIME, {"type": "number", "minimum": 0,
                                       "maximum": MAX_EPOCH_SECONDS * 1000}],
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
            "properties": optional(with_aliases({name: _metric for name in METRICS_NAMES},
                                                list(_METRIC_ALIASES))),
            "description": "A metric may come in its snake_case spelling too; in both, both "
                           "must be valid and the camelCase one counts. Names this version does "
                           "not know are ignored, whatever their value (newer agents keep "
                           "working).",
        },
        "metadata": METADATA,
    }
    return {
        "type": "object",
        "description": "Unknown fields are ignored (newer agents keep working). clientId, "
                       "ipAddress, osType and intervalSeconds may be sent in their snake_case "
                       "spellings, not both (null counts as absent).",
        "properties": optional(with_aliases(props, pairs)),
        "allOf": [required_spelling(*_ID_PAIR, CLIENT_ID_IN), *one_spelling(pairs[1:])],
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


def _registration() -> Schema:
    pairs = [_ID_PAIR, ("heartbeatTimeoutSeconds", "heartbeat_timeout_seconds")]
    props: dict[str, Schema] = {
        "clientId": CLIENT_ID_IN,
        "name": text(128),
        "tags": {"type": "array", "maxItems": MAX_TAGS, "items": string(
            64, minLength=1, pattern="^[^\\u0000-\\u001f]*$")},
        "heartbeatTimeoutSeconds": {"type": "number", "minimum": 1, "maximum": 30 * 86400},
        "metadata": METADATA,
    }
    return {
        **obj(optional(with_aliases(props, pairs))),
        "description": "Unknown fields are refused. clientId and heartbeatTimeoutSeconds may "
                       "be sent in their snake_case spellings, not both.",
        "allOf": [required_spelling(*_ID_PAIR, CLIENT_ID_IN), *one_spelling(pairs[1:])],
        "examples": [{"clientId": "robot-7", "name": "Robot 7", "tags": ["line-1"],
                      "heartbeatTimeoutSeconds": 90}],
    }


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
        # Each item is validated on its own: one that is not a Heartbeat is refused in its
        # result, and the batch is answered 200 with the others recorded.
        "HeartbeatBatch": obj({"heartbeats": {
            "type": "array", "maxItems": MAX_BATCH_HEARTBEATS,
            "items": {"anyOf": [ref("Heartbeat"), {
                "description": "anything else: refused in its own result (validation_failed)"
            }]}}},
            ("heartbeats",), closed=False,
            description="Other fields are ignored.",
            examples=[{"heartbeats": [
                {"clientId": "robot-7", "status": "online", "intervalSeconds": 20},
                {"clientId": "robot-8", "status": "busy", "metrics": {"load1": 0.5}}]}]),
        "HeartbeatBatchAnswer": obj({
            "accepted": COUNT, "rejected": COUNT,
            "results": {"type": "array", "items": _batch_result()},
        }, ("accepted", "rejected", "results")),
        "ClientPage": obj({
            "clients": {"type": "array", "items": ref("ClientView")},
            "total": COUNT, "limit": COUNT, "offset": COUNT,
            "counts": obj({s: COUNT for s in STATUSES}, STATUSES),
        }, ("clients", "total", "limit", "offset", "counts")),
        "Registration": _registration(),
        "Removed": obj({"removed": {"const": True}, "client": client_view_with(
            {"reason": {"const": "removed"}}, ("reason",))}, ("removed", "client")),
        "StatusHistory": obj({
            "clientId": CLIENT_ID,
            "events": {"type": "array", "items": obj({
                "at": TIME, "status": {"enum": [ONLINE, OFFLINE, UNKNOWN, "removed"]},
                "reason": nullable(string())}, ("at", "status", "reason"))},
        }, ("clientId", "events")),
        "TokenRequest": obj(optional({"ttl": string(
            examples=["30d", "never"], pattern=ttl_pattern(),
            description=f"90s, 15m, 1h, 30d, 2w or never; at most {MAX_TTL_SECONDS // 604800}"
                        f" weeks ({MAX_TTL_SECONDS // 86400} days); default never")})),
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
                "sweepLeaseHolder": nullable(NODE), "alertLeaseHolder": nullable(NODE),
                "epoch": nullable(EPOCH),
            }, ("backend", "node", "redis", "stale", "durability", "durable"),
                description="cluster mode only"),
        }, ("status", "epoch", "uptimeSeconds", "clients", "online", "serverTime")),
        "DashboardConfig": obj({"wsUrl": nullable(string()), "version": string()},
                               ("wsUrl", "version")),
    }


PING_TIMEOUT = {"type": "number", "exclusiveMinimum": 0,
                "maximum": MAX_PING_USER_TIMEOUT_SECONDS, "default": 5}
