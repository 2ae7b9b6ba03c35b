"""Reading requests: JSON bodies (size limit, valid JSON, valid Unicode, an object) and
integer query parameters, each failure an :class:`~rpad.api.errors.ApiError` naming what was
wrong. One reader for every route, the heartbeat fast path included."""

from __future__ import annotations

import json
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


def int_arg(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi] (422 naming it otherwise)."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_parameter(name, "must be an integer") from None
    if not lo <= value <= hi:
        raise invalid_parameter(name, f"must be from {lo} to {hi}")
    return value
