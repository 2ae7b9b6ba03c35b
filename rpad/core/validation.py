"""Request validation: heartbeats and registrations as parsed from request bodies, with errors
that name each bad field by its camelCase path.

Request bodies accept camelCase and the snake_case spellings that existing agents send
(``client_id``, ``ip_address``). Responses are camelCase only.
"""

from __future__ import annotations

import math
import re
from typing import Any

import attrs

from .errors import ValidationFailed
from .jsonenc import dumps
from .times import parse_iso

CLIENT_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The largest integer id: the integers a JSON number holds exactly everywhere (2**53 - 1).
MAX_INTEGER_ID = 2**53 - 1
TAG_RE = re.compile(r"[^\x00-\x1f]{1,64}")
MAX_STRING_CHARS = 256
MAX_METADATA_BYTES = 4096
MAX_TAGS = 32
NOT_UNICODE = "must be valid Unicode text (no lone surrogates)"
# Agent clocks given as epoch numbers must fall in the years 1970 to 9999.
MAX_EPOCH_SECONDS = 253402300799.0
# A metric's largest value (the largest any counter of bytes can sensibly reach).
METRIC_MAX = 1e18
# Agents' self-reported status: a short word such as online, busy, idle, error, offline.
REPORTED_STATUS_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")

METRIC_FIELDS = (
    "cpuUsagePercent", "memoryUsageBytes", "memoryTotalBytes", "diskUsageBytes",
    "diskTotalBytes", "networkRxInstantBps", "networkTxInstantBps", "uptimeSeconds",
    "load1", "load5", "load15",
)


# A JSON \\u escape of a UTF-16 surrogate: the only way a lone surrogate gets into a parsed body.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def has_lone_surrogate(raw: bytes, value: Any) -> bool:
    """True if ``value`` (parsed from the JSON text ``raw``) holds a string with a lone UTF-16
    surrogate (``"\\ud800"``): valid JSON, but not Unicode, so it cannot be stored in SQLite or
    sent back as UTF-8. Walks the value only when ``raw`` has a surrogate escape at all."""
    if not _SURROGATE_ESCAPE.search(raw):
        return False
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


@attrs.frozen(slots=True)
class Heartbeat:
    client_id: str
    timestamp: float | None = None
    status: str = "online"
    version: str | None = None
    ip_address: str | None = None
    os_type: str | None = None
    name: str | None = None
    interval_seconds: float | None = None
    metrics: dict[str, float] | None = None
    metadata: dict[str, Any] | None = None


class Fields:
    """Reads a JSON object's fields by camelCase name (or snake_case alias), collecting errors
    with their camelCase path."""

    __slots__ = ("data", "errors", "prefix", "seen")

    def __init__(self, data: dict[str, Any], prefix: str, errors: list[dict[str, str]]) -> None:
        self.data = data
        self.prefix = prefix
        self.errors = errors
        self.seen: set[str] = set()

    def fail(self, name: str, message: str) -> None:
        field = f"{self.prefix}{name}"
        if not _is_unicode(field):  # an unknown key quoted back must still encode
            field = field.encode("utf-8", "replace").decode("utf-8")
        self.errors.append({"field": field, "message": message})

    def get(self, name: str, alias: str | None = None) -> Any:
        """The field's value (None when absent or null), by its name or else its alias; both
        given (not null) is an error, whatever the values: one spelling per field."""
        self.seen.add(name)
        value = self.data.get(name)
        if alias is not None and alias != name:
            self.seen.add(alias)
            other = self.data.get(alias)
            if other is not None:
                if value is None:
                    return other
                self.fail(name, f"given twice, as {name} and {alias}: send one of them")
        return value

    def string(self, name: str, alias: str | None = None, *, max_chars: int = MAX_STRING_CHARS,
               pattern: re.Pattern[str] | None = None, what: str = "") -> str | None:
        value = self.get(name, alias)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(name, f"must be a string, got {kind_of(value)}")
            return None
        if len(value) > max_chars:
            self.fail(name, f"must be at most {max_chars} characters, got {len(value)}")
            return None
        if "\x00" in value:
            self.fail(name, "must not contain NUL characters")
            return None
        if not _is_unicode(value):
            self.fail(name, NOT_UNICODE)
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(name, what or f"must match {pattern.pattern}")
            return None
        return value

    def number(self, name: str, alias: str | None = None, *, minimum: float | None = None,
               maximum: float | None = None, either: bool = False) -> float | None:
        """A number field. With ``either``, the name and its alias may both be given: each is
        checked (errors named by ``name``) and the name's value is used."""
        if either and alias is not None and alias != name:
            self.seen.update((name, alias))
            first = self._number(self.data.get(name), name, minimum, maximum)
            second = self._number(self.data.get(alias), name, minimum, maximum)
            return first if first is not None else second
        return self._number(self.get(name, alias), name, minimum, maximum)

    def _number(self, value: Any, name: str, minimum: float | None,
                maximum: float | None) -> float | None:
        if value is None:
            return None
        if _finite(value) is None:
            self.fail(name, f"must be a number, got {kind_of(value)}")
            return None
        if minimum is not None and value < minimum:
            self.fail(name, f"must be at least {minimum:g}, got {value:g}")
            return None
        if maximum is not None and value > maximum:
            self.fail(name, f"must be at most {maximum:g}, got {value:g}")
            return None
        return float(value)

    def obj(self, name: str, *, max_bytes: int = MAX_METADATA_BYTES) -> dict[str, Any] | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail(name, f"must be a JSON object, got {kind_of(value)}")
            return None
        try:
            text = dumps(value)
        except ValueError:  # NaN or Infinity, which JSON cannot carry out again
            self.fail(name, "must not contain NaN or Infinity")
            return None
        except (TypeError, RecursionError):
            self.fail(name, "must be a plain JSON object")
            return None
        if not _is_unicode(text):
            self.fail(name, NOT_UNICODE)
            return None
        size = len(text.encode("utf-8"))
        if size > max_bytes:
            self.fail(name, f"must be at most {max_bytes} bytes as JSON, got {size}")
            return None
        return value


def _is_unicode(text: str) -> bool:
    """False for strings JSON can carry in but UTF-8 cannot carry out (lone surrogates such as
    ``"\\ud800"``): they would fail later, in the database or in a response."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _finite(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (booleans, NaN, Infinity, and
    integers too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number" if _finite(value) is not None else "a number out of range"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def client_id_of(value: Any) -> str:
    """A client id from a JSON value: a string, or an integer from 0 to MAX_INTEGER_ID (written
    1103 or 1103.0, as JSON Schema counts integers) as its decimal string. Raises ValueError
    with the message for the field."""
    if isinstance(value, bool):
        raise ValueError("must be a string or an integer, got a boolean")  # noqa: TRY004 (the field's message)
    if isinstance(value, float) and value.is_integer():
        if abs(value) > MAX_INTEGER_ID:  # a float that large may not be the number written
            raise ValueError(f"an integer id must be at most {MAX_INTEGER_ID} (send a larger "
                             "one as a string)")
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        if value > MAX_INTEGER_ID:
            raise ValueError(f"an integer id must be at most {MAX_INTEGER_ID} (send a larger "
                             "one as a string)")
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string or an integer, got {kind_of(value)}")  # noqa: TRY004
    if not CLIENT_ID_RE.fullmatch(value):
        raise ValueError("must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")
    return value


def parse_client_id(value: Any, fields: Fields, name: str, alias: str | None) -> str | None:
    try:
        return client_id_of(value)
    except ValueError as exc:
        fields.fail(name, str(exc))
        return None


def client_id_from_path(value: str) -> str:
    if not CLIENT_ID_RE.fullmatch(value):
        raise ValidationFailed(
            [{"field": "clientId", "message": "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"}]
        )
    return value


def parse_heartbeat(data: Any, prefix: str = "") -> Heartbeat:
    """Validate one heartbeat object. Raises ValidationFailed naming every bad field.

    The common well-formed heartbeat is read by :func:`read_plain_heartbeat`; anything else by the
    full validator, which gives the same Heartbeat for what the fast one accepts (a property
    test holds them together) and names every problem."""
    if type(data) is dict:
        hb = read_plain_heartbeat(data)
        if hb is not None:
            return hb
    return validate_heartbeat(data, prefix)


# The snake_case spellings a heartbeat may use; the fast reader leaves them to the validator.
_HEARTBEAT_ALIASES = ("client_id", "ip_address", "os_type", "interval_seconds")
_OPTIONAL_STRINGS = (("version", 64), ("ipAddress", 64), ("osType", 64), ("name", 128))


def _plain_number(value: Any, minimum: float, maximum: float) -> float | None:
    """A JSON number within [minimum, maximum] as a float; None for anything else."""
    if type(value) is float:
        if math.isfinite(value) and minimum <= value <= maximum:
            return value
        return None
    if type(value) is int and minimum <= value <= maximum:
        return float(value)
    return None


def read_plain_heartbeat(data: dict[str, Any]) -> Heartbeat | None:
    """The heartbeat of a well-behaved agent — camelCase keys, no metadata, an ISO timestamp or
    none, every value plainly valid — read without the validator's bookkeeping; None for
    anything else (the validator then reads it and names what is wrong)."""
    for alias in _HEARTBEAT_ALIASES:
        if alias in data:
            return None
    if data.get("metadata") is not None:
        return None
    client_id = data.get("clientId")
    if type(client_id) is not str or not CLIENT_ID_RE.fullmatch(client_id):
        return None
    status = data.get("status")
    if status is None:
        status = "online"
    elif type(status) is not str or not REPORTED_STATUS_RE.fullmatch(status):
        return None
    strings: list[str | None] = []
    for key, max_chars in _OPTIONAL_STRINGS:
        value = data.get(key)
        if value is not None and (type(value) is not str or len(value) > max_chars
                                  or "\x00" in value
                                  or (not value.isascii() and not _is_unicode(value))):
            return None
        strings.append(value)
    timestamp = None
    raw_ts = data.get("timestamp")
    if raw_ts is not None:
        if type(raw_ts) is not str:
            return None
        try:
            timestamp = parse_iso(raw_ts)
        except (ValueError, OverflowError):
            return None
    interval = None
    raw_interval = data.get("intervalSeconds")
    if raw_interval is not None:
        interval = _plain_number(raw_interval, 0.001, 86400)
        if interval is None:
            return None
    metrics: dict[str, float] | None = None
    raw_metrics = data.get("metrics")
    if raw_metrics is not None:
        if type(raw_metrics) is not dict:
            return None
        metrics = {}
        for key, alias in _METRIC_ALIASES:
            if alias != key and alias in raw_metrics:
                return None
            value = raw_metrics.get(key)
            if value is not None:
                number = _plain_number(value, 0, METRIC_MAX)
                if number is None:
                    return None
                metrics[key] = number
    version, ip, os_type, name = strings
    return Heartbeat(client_id=client_id, timestamp=timestamp, status=status, version=version,
                     ip_address=ip, os_type=os_type, name=name, interval_seconds=interval,
                     metrics=metrics, metadata=None)


def validate_heartbeat(data: Any, prefix: str = "") -> Heartbeat:
    """The validator: every field checked, every problem named with its camelCase path."""
    errors: list[dict[str, str]] = []
    if not isinstance(data, dict):
        raise ValidationFailed(
            [{"field": prefix.rstrip(".") or "(body)", "message": f"must be a JSON object, got {kind_of(data)}"}]
        )
    f = Fields(data, prefix, errors)
    raw_id = f.get("clientId", "client_id")
    client_id = None
    if raw_id is None:
        f.fail("clientId", "is required")
    else:
        client_id = parse_client_id(raw_id, f, "clientId", "client_id")
    timestamp = None
    raw_ts = f.get("timestamp")
    if raw_ts is not None:
        if isinstance(raw_ts, str):
            try:
                timestamp = parse_iso(raw_ts)
            except (ValueError, OverflowError):
                f.fail("timestamp", "must be an ISO 8601 time such as 2025-07-23T12:00:00Z")
        elif (epoch := _finite(raw_ts)) is not None:
            # Epoch seconds (or milliseconds, as some agents send them).
            timestamp = epoch / 1000.0 if epoch > 1e11 else epoch
            if not 0 <= timestamp <= MAX_EPOCH_SECONDS:
                f.fail("timestamp", "must be epoch seconds or milliseconds from 1970 to 9999")
                timestamp = None
        else:
            f.fail("timestamp", f"must be an ISO 8601 time, got {kind_of(raw_ts)}")
    status = f.string("status", pattern=REPORTED_STATUS_RE,
                      what="must be a short word such as online, busy, idle, error or offline")
    version = f.string("version", max_chars=64)
    ip = f.string("ipAddress", "ip_address", max_chars=64)
    os_type = f.string("osType", "os_type", max_chars=64)
    name = f.string("name", max_chars=128)
    interval = f.number("intervalSeconds", "interval_seconds", minimum=0.001, maximum=86400)
    metrics: dict[str, float] | None = None
    raw_metrics = f.get("metrics")
    if raw_metrics is not None:
        if not isinstance(raw_metrics, dict):
            f.fail("metrics", f"must be a JSON object, got {kind_of(raw_metrics)}")
        else:
            mf = Fields(raw_metrics, f"{prefix}metrics.", errors)
            metrics = {}
            for key, alias in _METRIC_ALIASES:
                if key not in raw_metrics and alias not in raw_metrics:
                    continue
                # A metric in both spellings: both checked, the camelCase one counts.
                v = mf.number(key, alias, minimum=0, maximum=METRIC_MAX, either=True)
                if v is not None:
                    metrics[key] = v
            # Metrics this version does not know are ignored, so newer agents keep working.
    metadata = f.obj("metadata")
    if errors:
        raise ValidationFailed(errors)
    assert client_id is not None
    return Heartbeat(
        client_id=client_id,
        timestamp=timestamp,
        status=status or "online",
        version=version,
        ip_address=ip,
        os_type=os_type,
        name=name,
        interval_seconds=interval,
        metrics=metrics,
        metadata=metadata,
    )


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


# (camelCase, snake_case) of every metric, computed once: a heartbeat is the hot path.
_METRIC_ALIASES = tuple((key, _snake(key)) for key in METRIC_FIELDS)


@attrs.frozen(slots=True)
class Registration:
    client_id: str
    name: str | None = None
    tags: list[str] | None = None
    heartbeat_timeout_seconds: float | None = None
    metadata: dict[str, Any] | None = None


def parse_registration(data: Any) -> Registration:
    if not isinstance(data, dict):
        raise ValidationFailed([{"field": "(body)", "message": f"must be a JSON object, got {kind_of(data)}"}])
    errors: list[dict[str, str]] = []
    f = Fields(data, "", errors)
    raw_id = f.get("clientId", "client_id")
    client_id = None
    if raw_id is None:
        f.fail("clientId", "is required")
    else:
        client_id = parse_client_id(raw_id, f, "clientId", "client_id")
    name = f.string("name", max_chars=128)
    tags = parse_tags(f.get("tags"), f)
    timeout = f.number("heartbeatTimeoutSeconds", "heartbeat_timeout_seconds",
                       minimum=1, maximum=30 * 86400)
    metadata = f.obj("metadata")
    for k in data:
        if k not in f.seen:
            f.fail(str(k)[:64], "is not a known field (clientId, name, tags, heartbeatTimeoutSeconds, metadata)")
    if errors:
        raise ValidationFailed(errors)
    assert client_id is not None
    return Registration(client_id, name, tags, timeout, metadata)


def parse_tags(value: Any, f: Fields) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        f.fail("tags", f"must be an array of strings, got {kind_of(value)}")
        return None
    if len(value) > MAX_TAGS:
        f.fail("tags", f"must have at most {MAX_TAGS} tags, got {len(value)}")
        return None
    tags: list[str] = []
    for i, t in enumerate(value):
        if not isinstance(t, str) or not TAG_RE.fullmatch(t) or not _is_unicode(t):
            f.fail(f"tags[{i}]", "must be a string of 1 to 64 printable characters")
        elif t not in tags:
            tags.append(t)
    return tags
