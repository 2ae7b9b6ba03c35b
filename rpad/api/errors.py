"""HTTP errors: the one JSON error shape, and the domain's errors translated into it once.

Every failure a route can answer is an :class:`ApiError`, sent as ``{"error", "message",
"details"}`` with its status and headers. Domain errors (:mod:`rpad.core.errors`) become API
errors in :func:`translate`; anything else is a bug, which the app logs with its traceback and
answers with a 500 body that reveals nothing.
"""

from __future__ import annotations

import math
from typing import Any

from quart import Response

from ..core.errors import (
    AuthError,
    BackendUnavailable,
    Conflict,
    FleetFull,
    NotFound,
    RateLimited,
    StorageUnavailable,
    TooManyFailures,
    TooManyRegistrations,
    UnknownClient,
    ValidationFailed,
)
from ..core.jsonenc import dumps

STORAGE_RETRY_AFTER_SECONDS = 5
INTERNAL_ERROR_MESSAGE = "an internal error occurred; it has been logged"
BEARER_CHALLENGE = 'Bearer realm="rpad"'


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 details: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}
        super().__init__(message)


def body_too_large(limit: int, size: int | None = None) -> ApiError:
    """413: a body over ``http.max_body_bytes`` (``size`` when it was declared)."""
    if size is None:
        return ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
    return ApiError(413, "body_too_large", f"the body is {size} bytes; the limit is {limit}")


def unknown_client() -> ApiError:
    return ApiError(404, "unknown_client", "no client with this id is registered")


def invalid_parameter(name: str, message: str) -> ApiError:
    """422 for a bad query parameter."""
    return ApiError(422, "validation_failed", f"invalid query parameter: {name}",
                    [{"field": name, "message": message}])


def error_body(status: int, code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": code, "message": message, "details": details or []}


def translate(exc: BaseException) -> ApiError:
    """The API error for a domain error; re-raises anything else (a bug)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AuthError):
        # RFC 6750: a 401 names the scheme the client should authenticate with.
        headers = {"WWW-Authenticate": BEARER_CHALLENGE} if exc.status == 401 else None
        return ApiError(exc.status, exc.code, exc.message, headers=headers)
    if isinstance(exc, TooManyFailures):
        retry = max(1, math.ceil(exc.retry_after_seconds))
        return ApiError(429, "too_many_auth_failures",
                        "too many failed authentications from this address; wait and retry",
                        headers={"Retry-After": str(retry)})
    if isinstance(exc, ValidationFailed):
        return ApiError(422, "validation_failed", str(exc), exc.details)
    if isinstance(exc, RateLimited):
        retry = max(1, math.ceil(exc.retry_after_seconds))
        return ApiError(429, "rate_limited",
                        "heartbeats from this client are more frequent than the minimum interval",
                        headers={"Retry-After": str(retry)})
    if isinstance(exc, UnknownClient):
        return unknown_client()
    if isinstance(exc, BackendUnavailable):
        return ApiError(503, "backend_unavailable",
                        "the cluster's shared backend is unreachable; nothing was written; "
                        "retry later",
                        headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_seconds)))})
    if isinstance(exc, FleetFull):
        return ApiError(409, "fleet_full",
                        f"the fleet is at its cap of {exc.max_clients} clients "
                        "(presence.max_clients): no new client can register until an "
                        "administrator removes some or raises the cap")
    if isinstance(exc, TooManyRegistrations):
        retry = max(1, math.ceil(exc.retry_after_seconds))
        return ApiError(429, "too_many_registrations",
                        "this token registers new clients faster than "
                        "presence.registrations_per_minute allows",
                        headers={"Retry-After": str(retry)})
    if isinstance(exc, NotFound):
        return ApiError(404, exc.code, exc.message)
    if isinstance(exc, Conflict):
        return ApiError(409, exc.code, exc.message)
    if isinstance(exc, StorageUnavailable):
        return ApiError(503, "storage_unavailable",
                        "the database cannot commit right now; retry later",
                        headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)})
    raise exc


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = Response(dumps(body), status=status, content_type="application/json")
    if headers:
        resp.headers.update(headers)
    return resp


def error_response(err: ApiError) -> Response:
    return json_response(error_body(err.status, err.code, err.message, err.details), err.status,
                         err.headers)
