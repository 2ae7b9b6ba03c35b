"""The HTTP API (SPEC §3): a Quart-Trio app served by Hypercorn.

Handlers are thin: parse, check the token, call :class:`~rpad.presence.Presence`, shape the
JSON. Every failure is an :class:`ApiError` turned into ``{"error", "message", "details"}``;
an unexpected exception is logged with its traceback and answered with a plain 500 body that
reveals nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import attrs
from quart import Quart, Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .auth import (
    Authenticator,
    AuthError,
    Principal,
    bearer_token,
    parse_ttl,
    require_client_access,
    require_role,
)
from .config import Config
from .models import (
    ValidationFailed,
    client_id_from_path,
    has_lone_surrogate,
    iso,
    parse_registration,
)
from .presence import MAX_BATCH_HEARTBEATS, Presence
from .proxy import client_address
from .registry import RateLimited, UnknownClient
from .store import StorageUnavailable

log = logging.getLogger(__name__)

DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
STORAGE_RETRY_AFTER_SECONDS = 5
AUTH_FAILURE_WINDOW_SECONDS = 60.0


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


# Built once: json.dumps with these options builds an encoder per call.
_RESPONSE_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = _RESPONSE_ENCODER.encode(body)
    resp = Response(text, status=status, content_type="application/json")
    if headers:
        resp.headers.update(headers)
    return resp


def error_body(status: int, code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": code, "message": message, "details": details or []}


def api_error_from(exc: BaseException) -> ApiError:
    """Translate the domain's exceptions into API errors (shared by every HTTP path)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AuthError):
        return ApiError(exc.status, exc.code, exc.message)
    if isinstance(exc, ValidationFailed):
        return ApiError(422, "validation_failed", str(exc), exc.details)
    if isinstance(exc, RateLimited):
        retry = max(1, math.ceil(exc.retry_after_seconds))
        return ApiError(429, "rate_limited",
                        "heartbeats from this client are more frequent than the minimum interval",
                        headers={"Retry-After": str(retry)})
    if isinstance(exc, UnknownClient):
        return ApiError(404, "unknown_client", "no client with this id is registered")
    if isinstance(exc, StorageUnavailable):
        return ApiError(503, "storage_unavailable",
                        "the database cannot commit right now; retry later",
                        headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)})
    raise exc


class AuthFailureLimiter:
    """Counts failed authentications per peer address; over the limit, answers 429."""

    def __init__(self, max_per_window: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_per_window = max_per_window
        self.clock = clock
        self._failures: dict[str, list[float]] = {}

    def check(self, peer: str) -> None:
        times = self._failures.get(peer)
        if not times:
            return
        now = self.clock()
        while times and times[0] < now - AUTH_FAILURE_WINDOW_SECONDS:
            times.pop(0)
        if len(times) >= self.max_per_window:
            retry = max(1, math.ceil(times[0] + AUTH_FAILURE_WINDOW_SECONDS - now))
            raise ApiError(429, "too_many_auth_failures",
                           "too many failed authentications from this address; wait and retry",
                           headers={"Retry-After": str(retry)})
        if not times:
            del self._failures[peer]

    def failed(self, peer: str) -> None:
        if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
            self._failures.clear()
        times = self._failures.setdefault(peer, [])
        times.append(self.clock())
        del times[: -self.max_per_window]


@attrs.define
class AppState:
    config: Config
    presence: Presence
    auth: Authenticator
    limiter: AuthFailureLimiter
    started_at: float
    epoch: str
    extra_health: Callable[[], dict[str, Any]] = dict


def authenticate(state: AppState, authorization: str | None, peer: str) -> Principal:
    state.limiter.check(peer)
    token = bearer_token(authorization)
    if token is None:
        raise AuthError(401, "an Authorization: Bearer <token> header is required")
    try:
        return state.auth.verify(token)
    except AuthError as exc:
        state.limiter.failed(peer)
        log.warning("authentication failed from %s: %s", peer, exc.message)
        raise


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
        raise ApiError(413, "body_too_large",
                       f"the body is {content_length} bytes; the limit is {limit}")


def parse_json_object(data: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (400 otherwise)."""
    body = parse_json_body(data)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return body


async def request_json_object(limit: int, *, allow_empty: bool = False) -> dict[str, Any]:
    """The current Quart request's body as a JSON object; ``{}`` for an empty body when
    ``allow_empty``."""
    check_body_length(request.content_length, limit)
    data = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    if allow_empty and not data.strip():
        return {}
    return parse_json_object(data)


def create_app(state: AppState) -> Quart:
    # No built-in /static route: rpad.dashboard serves the page's files by exact name.
    app = QuartTrio("rpad", static_folder=None)
    # "/api/v1//clients" is an unknown path (a JSON 404), not an HTML redirect.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = state.config.http.max_body_bytes
    app.config["BODY_TIMEOUT"] = 30
    app.config["JSON_SORT_KEYS"] = False
    presence = state.presence

    def peer() -> str:
        return client_address(request.remote_addr or "unknown",
                              request.headers.get, state.config.http.trusted_proxies)

    def principal() -> Principal:
        return authenticate(state, request.headers.get("Authorization"), peer())

    async def body_object() -> dict[str, Any]:
        return await request_json_object(state.config.http.max_body_bytes)

    def known_client(client_id: str) -> str:
        cid = client_id_from_path(client_id)
        if presence.registry.get(cid) is None:
            raise ApiError(404, "unknown_client", "no client with this id is registered")
        return cid

    @app.errorhandler(Exception)
    async def _on_error(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            status = exc.code or 500
            code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                    413: "body_too_large", 408: "request_timeout"}.get(status, "http_error")
            message = {
                404: "no such endpoint",
                405: f"{request.method} is not allowed on {request.path}",
                413: f"the body is larger than {state.config.http.max_body_bytes} bytes",
            }.get(status, exc.description or exc.name)
            return json_response(error_body(status, code, message), status)
        try:
            err = api_error_from(exc)
        except BaseException:
            log.exception("unexpected error in %s %s", request.method, request.path)
            return json_response(error_body(500, "internal_error",
                                            "an internal error occurred; it has been logged"), 500)
        return json_response(error_body(err.status, err.code, err.message, err.details),
                             err.status, err.headers)

    # -- heartbeats ----------------------------------------------------------------------------

    @app.post("/api/v1/client/heartbeat")
    async def heartbeat() -> Response:
        # The same implementation as the ASGI fast path (rpad.fastpath), which normally
        # answers this route before Quart sees it (http.fast_path = false routes it here).
        from .fastpath import handle_heartbeat

        async def read_body(limit: int) -> bytes:
            try:
                data: bytes = await request.get_data(cache=False, as_text=False,
                                                     parse_form_data=False)
            except RequestEntityTooLarge:
                raise ApiError(413, "body_too_large",
                               f"the body is larger than {limit} bytes") from None
            return data

        status, body, headers = await handle_heartbeat(
            state, request.headers.get("Authorization"), peer(), request.content_length, read_body)
        return json_response(body, status, headers)

    @app.post("/api/v1/client/heartbeats")
    async def heartbeats() -> Response:
        p = principal()
        require_role(p, "service")
        body = await body_object()
        items = body.get("heartbeats")
        if not isinstance(items, list):
            raise ApiError(422, "validation_failed", "invalid field: heartbeats",
                           [{"field": "heartbeats", "message": "must be an array of heartbeat objects"}])
        if len(items) > MAX_BATCH_HEARTBEATS:
            raise ApiError(422, "validation_failed", "invalid field: heartbeats",
                           [{"field": "heartbeats",
                             "message": f"must hold at most {MAX_BATCH_HEARTBEATS} heartbeats, got {len(items)}"}])
        results = await presence.heartbeat_batch(items, peer(), lambda _cid: True)
        ok = sum(1 for r in results if r["ok"])
        return json_response({"accepted": ok, "rejected": len(results) - ok, "results": results})

    @app.get("/api/v1/client/heartbeat/status/<client_id>")
    async def heartbeat_status(client_id: str) -> Response:
        p = principal()
        cid = client_id_from_path(client_id)
        require_client_access(p, cid, write=False)
        if p.role == "agent" or p.at_least("viewer"):
            client = presence.registry.get(cid)
            if client is None:
                raise ApiError(404, "unknown_client", "no client with this id is registered")
            return json_response(presence.registry.view(client))
        raise AuthError(403, "not allowed")

    # -- clients -------------------------------------------------------------------------------

    @app.get("/api/v1/clients")
    async def list_clients() -> Response:
        require_role(principal(), "viewer")
        args = request.args
        status = args.get("status")
        if status is not None and status not in ("online", "offline", "unknown"):
            raise ApiError(422, "validation_failed", "invalid query parameter: status",
                           [{"field": "status", "message": "must be online, offline or unknown"}])
        limit = _int_arg(args.get("limit"), "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
        offset = _int_arg(args.get("offset"), "offset", 0, 0, 10**9)
        q = (args.get("q") or "").strip().lower()
        tag = args.get("tag")
        counts = {"online": 0, "offline": 0, "unknown": 0}
        matched = []
        for c in presence.registry:
            if tag is not None and tag not in c.tags:
                continue
            if q and not _matches(c, q):
                continue
            counts[c.status] = counts.get(c.status, 0) + 1
            if status is None or c.status == status:
                matched.append(c)
        matched.sort(key=lambda c: c.client_id)
        page = matched[offset: offset + limit]
        return json_response({
            "clients": [presence.registry.view(c) for c in page],
            "total": len(matched),
            "limit": limit,
            "offset": offset,
            "counts": counts,
        })

    @app.post("/api/v1/clients")
    async def register_client() -> Response:
        require_role(principal(), "admin")
        reg = parse_registration(await body_object())
        view, created = await presence.register(reg)
        return json_response(view, 201 if created else 200)

    @app.get("/api/v1/clients/<client_id>")
    async def get_client(client_id: str) -> Response:
        require_role(principal(), "viewer")
        cid = known_client(client_id)
        client = presence.registry.get(cid)
        assert client is not None
        return json_response(presence.registry.view(client))

    @app.delete("/api/v1/clients/<client_id>")
    async def delete_client(client_id: str) -> Response:
        require_role(principal(), "admin")
        cid = known_client(client_id)
        view = await presence.remove(cid)
        return json_response({"removed": True, "client": view})

    @app.get("/api/v1/clients/<client_id>/events")
    async def client_events(client_id: str) -> Response:
        require_role(principal(), "viewer")
        cid = known_client(client_id)
        limit = _int_arg(request.args.get("limit"), "limit", 100, 1, 1000)
        rows = await presence.store.history(cid, limit)
        return json_response({
            "clientId": cid,
            "events": [{"at": iso(at), "status": status, "reason": reason} for at, status, reason in rows],
        })

    @app.post("/api/v1/clients/<client_id>/tokens")
    async def mint_token(client_id: str) -> Response:
        require_role(principal(), "admin")
        cid = client_id_from_path(client_id)
        if presence.registry.get(cid) is None and state.config.presence.registration == "manual":
            raise ApiError(404, "unknown_client", "no client with this id is registered")
        ttl: float | None = None
        body = await request_json_object(state.config.http.max_body_bytes, allow_empty=True)
        raw = body.get("ttl")
        if raw is not None:
            try:
                if not isinstance(raw, str):
                    raise ValueError("must be a string such as 30d or never")  # noqa: TRY004 (caught just below)
                ttl = parse_ttl(raw)
            except ValueError as exc:
                raise ApiError(422, "validation_failed", "invalid field: ttl",
                               [{"field": "ttl", "message": str(exc)}]) from None
        token = state.auth.mint(role="agent", sub=cid, ttl_seconds=ttl)
        now = presence.wall_clock()
        return json_response({
            "clientId": cid,
            "token": token,
            "generation": presence.token_generation(cid),
            "expiresAt": iso(now + ttl) if ttl is not None else None,
        }, 201)

    @app.delete("/api/v1/clients/<client_id>/tokens")
    async def revoke_tokens(client_id: str) -> Response:
        require_role(principal(), "admin")
        cid = client_id_from_path(client_id)
        gen = await presence.revoke_tokens(cid)
        return json_response({"clientId": cid, "revoked": True, "generation": gen})

    # -- health --------------------------------------------------------------------------------

    @app.get("/api/v1/health")
    async def health() -> Response:
        reg = presence.registry
        body = {
            "status": "ok",
            "epoch": state.epoch,
            "uptimeSeconds": round(time.monotonic() - state.started_at, 3),
            "clients": len(reg),
            "online": reg.online_count,
            "serverTime": iso(presence.wall_clock()),
        }
        body.update(state.extra_health())
        return json_response(body)

    return app


def _matches(c: Any, q: str) -> bool:
    for value in (c.client_id, c.name, c.ip_address, c.version):
        if value and q in value.lower():
            return True
    return any(q in t.lower() for t in c.tags)


def _int_arg(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "validation_failed", f"invalid query parameter: {name}",
                       [{"field": name, "message": "must be an integer"}]) from None
    if not lo <= value <= hi:
        raise ApiError(422, "validation_failed", f"invalid query parameter: {name}",
                       [{"field": name, "message": f"must be from {lo} to {hi}"}])
    return value
