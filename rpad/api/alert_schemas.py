"""The alerts' admin API in the OpenAPI document (:mod:`rpad.api.alerts`): request bodies and
answers, merged into ``components/schemas`` by :mod:`rpad.api.openapi`."""

from __future__ import annotations

from ..config_alerts import ALL_EVENTS, TARGET_NAME_RE
from ..core.alert_policy import LEVELS
from ..core.silences import MAX_COMMENT_CHARS, MAX_MATCH_ITEMS
from ..core.validation import TAG_RE
from .schemas import (
    CLIENT_ID,
    CLIENT_ID_IN,
    COUNT,
    NUMBER,
    TIME,
    Schema,
    anchored,
    not_blank,
    nullable,
    obj,
    optional,
    ref,
    string,
    text,
)

TAG = string(64, minLength=1, pattern=anchored(TAG_RE), description="exact; no wildcards")
# A silence names tags exactly: the characters of a wildcard are refused (rpad.core.silences).
EXACT_TAG = string(64, minLength=1, pattern="^[^\\u0000-\\u001f*?\\[\\]]{1,64}$",
                   description="exact: no wildcards (* ? [ ])")
TARGET_NAME = string(64, pattern=anchored(TARGET_NAME_RE), examples=["ops"])
LEVEL: Schema = {"enum": list(LEVELS)}
SECONDS: Schema = {"type": "number", "minimum": 0, "maximum": 366 * 86400}
_POLICY: dict[str, Schema] = {
    "alertAfterSeconds": SECONDS, "recoverAfterSeconds": SECONDS,
    "flapTransitions": {"type": "integer", "minimum": 0, "maximum": 1000},
    "flapWindowSeconds": SECONDS, "repeatEverySeconds": SECONDS,
    "maxReminders": {"type": "integer", "minimum": 0, "maximum": 1000},
    "offlineLevel": LEVEL,
}


def _match_request() -> Schema:
    """What parse_match accepts: client ids (an integer id is its decimal string) and/or exact
    tags, null meaning absent, at least one of either."""
    lists = {"clientIds": {"type": "array", "items": CLIENT_ID_IN, "maxItems": MAX_MATCH_ITEMS},
             "tags": {"type": "array", "items": EXACT_TAG, "maxItems": MAX_MATCH_ITEMS}}
    return {**obj(optional(lists)),
            "description": "any of the client ids, or any client carrying one of the tags; at "
                           "least one of either",
            "anyOf": [{"required": [k], "properties": {k: {"type": "array", "minItems": 1}}}
                      for k in lists]}


def _policy_request() -> dict[str, Schema]:
    """A policy's fields as an override takes them: flapping needs at least 2 transitions
    (1 would make every transition flapping), 0 turns it off."""
    return {**_POLICY, "flapTransitions": {"anyOf": [
        {"const": 0}, {"type": "integer", "minimum": 2, "maximum": 1000}]}}


def _match() -> Schema:
    return obj({"clientIds": {"type": "array", "items": CLIENT_ID, "maxItems": MAX_MATCH_ITEMS},
                "tags": {"type": "array", "items": TAG, "maxItems": MAX_MATCH_ITEMS}},
               description="any of the client ids, or any client carrying one of the tags; at "
                           "least one of either")


def _silence() -> Schema:
    return obj({
        "id": string(), "match": ref("SilenceMatch"), "startsAt": TIME, "endsAt": TIME,
        "comment": string(), "createdBy": string(), "createdAt": nullable(TIME),
        "active": {"type": "boolean"}, "kind": {"enum": ["silence", "maintenance"]},
    }, ("id", "match", "startsAt", "endsAt", "comment", "createdBy", "createdAt", "active",
        "kind"))


def _override() -> Schema:
    return obj(dict(_POLICY))


def _delivery() -> Schema:
    return obj({
        "deliveryId": string(), "target": string(), "event": string(), "level": LEVEL,
        "clients": string(description="the client id, or the first ids of a group"),
        "createdAt": TIME, "finishedAt": TIME, "attempts": COUNT, "nextAttemptAt": TIME,
        "lastError": nullable(string()), "detail": nullable(string()),
        "outcome": {"enum": ["pending", "in_flight", "delivered", "failed", "expired",
                             "dropped", "orphaned"]},
    }, ("deliveryId", "target", "event", "level", "clients", "createdAt", "attempts",
        "outcome"))


def alert_components() -> dict[str, Schema]:
    override = _override()
    return {
        "SilenceMatch": _match(),
        "SilenceMatchRequest": _match_request(),
        "SilenceRequest": obj(optional({
            "match": ref("SilenceMatchRequest"),
            "startsAt": {**TIME, "description": "default: now"},
            "endsAt": {**TIME, "description": "after startsAt, in the future, within a year"},
            "comment": not_blank(MAX_COMMENT_CHARS, description="why (required)"),
            "createdBy": text(128, description="default: the token's subject"),
        }, ("match", "endsAt", "comment")), ("match", "endsAt", "comment"),
            examples=[{"match": {"tags": ["line-2"]}, "endsAt": "2026-03-02T02:00:00Z",
                       "comment": "gripper swap"}]),
        "Silence": _silence(),
        "Silences": obj({"silences": {"type": "array", "items": ref("Silence")},
                         "serverTime": TIME}, ("silences", "serverTime")),
        "SilenceDeleted": obj({"deleted": {"const": True}, "silence": ref("Silence")},
                              ("deleted", "silence")),
        "PolicyOverride": {
            **obj(optional(_policy_request())),
            "description": "null or absent: not overridden; at least one field",
            "anyOf": [{"required": [k], "properties": {k: v}}
                      for k, v in _policy_request().items()]},
        "Policies": obj({
            "default": obj(_POLICY, tuple(_POLICY)),
            "grouping": obj({"groupWindowSeconds": NUMBER, "groupThreshold": COUNT},
                            ("groupWindowSeconds", "groupThreshold")),
            "tags": {"type": "object", "additionalProperties": ref("PolicyLayers")},
            "clients": {"type": "object", "additionalProperties": ref("PolicyLayers")},
        }, ("default", "grouping", "tags", "clients")),
        "PolicyLayers": obj({"config": override, "api": override}, ("config", "api")),
        "PolicySet": obj({"scope": {"enum": ["tag", "client"]}, "name": string(),
                          "policy": ref("PolicyLayers")}, ("scope", "name", "policy")),
        "PolicyDeleted": obj({"deleted": {"const": True}, "scope": {"enum": ["tag", "client"]},
                              "name": string()}, ("deleted", "scope", "name")),
        "Deliveries": obj({
            "targets": {"type": "array", "items": obj({
                "kind": {"enum": ["webhook", "email", "apprise"]}, "target": string(),
                "label": string(), "delivered": COUNT, "failed": COUNT, "dropped": COUNT,
                "expired": COUNT, "attempts": COUNT, "queued": COUNT})},
            "pending": {"type": "array", "items": ref("Delivery")},
            "log": {"type": "array", "items": ref("Delivery")},
        }, ("targets", "pending", "log")),
        "Delivery": _delivery(),
        "TestAlertRequest": obj({"target": {**TARGET_NAME, "description": "a configured "
                                            "target's name (never an address)"}},
                                ("target",), examples=[{"target": "ops"}]),
        "TestAlertQueued": obj({"target": string(), "deliveryId": string(),
                                "queued": {"const": True}}, ("target", "deliveryId", "queued")),
        "AlertEvents": {"enum": list(ALL_EVENTS)},
    }
