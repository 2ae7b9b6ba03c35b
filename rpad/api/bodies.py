"""Reading requests: JSON bodies (size limit, valid JSON, valid Unicode, an object) and
integer query parameters, each failure an :class:`~rpad.api.errors.ApiError` naming what was
wrong. One reader for every route, the heartbeat fast path included."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from quart import request
from werkzeug.exceptions import RequestEntityTooLarge

from ..core.validation import has_lone_surrogate
from .errors import ApiError, body_too_large, invalid_parameter


def parse_json_body(data: bytes) -> Any:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    if has_lone_surrogate(data, body):
        raise ApiError(400, "invalid_json",
                       "the request body holds a lone UTF-16 surrogate escape (such as \\ud800), "
                       "which is not valid Unicode")
    return body


def check_body_length(content_length: int | None, limit: int) -> None:
    """413 for a declared Content-Length over ``limit`` (before reading any of it)."""
    if content_length is not None and content_length > limit:
        raise body_too_large(limit, content_length)


def parse_json_object(data: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (400 otherwise)."""
    body = parse_json_body(data)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return body


async def request_body(limit: int) -> bytes:
    """The current Quart request's body (413 past ``limit``)."""
    check_body_length(request.content_length, limit)
    try:
        data: bytes = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    except RequestEntityTooLarge:
        raise body_too_large(limit) from None
    return data


async def request_json_object(limit: int, *, allow_empty: bool = False) -> dict[str, Any]:
    """The current Quart request's body as a JSON object; ``{}`` for an empty body when
    ``allow_empty``."""
    data = await request_body(limit)
    if allow_empty and not data.strip():
        return {}
    return parse_json_object(data)


# Query parameters are read as the OpenAPI document types them, and no more loosely than
# that: ASCII digits, no sign but "-", no spaces or "_" (which int() and float() let through).
_INTEGER_RE = re.compile(r"-?[0-9]+")
_NUMBER_RE = re.compile(r"-?[0-9]+(?:[.][0-9]+)?(?:[eE][-+]?[0-9]+)?")
_MAX_NUMBER_CHARS = 64


def int_arg(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi]; ``default`` when absent; 422 naming it
    otherwise (an empty value included)."""
    if raw is None:
        return default
    if not _INTEGER_RE.fullmatch(raw):
        raise invalid_parameter(name, "must be an integer")
    try:
        value = int(raw)
    except ValueError:  # more digits than Python converts: out of range all the same
        value = hi + 1
    if not lo <= value <= hi:
        raise invalid_parameter(name, f"must be from {lo} to {hi}")
    return value


def number_arg(raw: str, name: str, message: str) -> float:
    """A number query parameter, finite (422 naming it with ``message`` otherwise)."""
    if not _NUMBER_RE.fullmatch(raw) or len(raw) > _MAX_NUMBER_CHARS:
        raise invalid_parameter(name, message)
    value = float(raw)
    if not math.isfinite(value):
        raise invalid_parameter(name, message)
    return value
