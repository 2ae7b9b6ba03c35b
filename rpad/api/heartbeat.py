"""``POST /api/v1/client/heartbeat``: the heartbeat handler, and its fast path at the ASGI level in
front of the Quart app.

A heartbeat is rpad's hot path and Quart's request machinery (request and response objects,
context locals, routing, before/after hooks) costs several times what the heartbeat itself
costs. :class:`HeartbeatFastPath` answers that one route directly from the ASGI scope and passes
everything else to Quart unchanged.

There is one implementation of the heartbeat: :func:`handle_heartbeat` does authentication,
body limits, JSON parsing, validation, access checks and the call into
:class:`~rpad.service.presence.Presence`, and the Quart route calls the same function, so both paths
give identical answers and errors (the test suite runs its heartbeat tests against both).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..auth import bearer_token
from ..core.errors import (
    FleetFull,
    RateLimited,
    StorageUnavailable,
    TooManyRegistrations,
    UnknownClient,
)
from ..core.jsonenc import dumps_bytes
from ..core.principal import Principal, require_client_access
from ..core.validation import parse_heartbeat
from .bodies import check_body_length, parse_json_object
from .context import ApiContext
from .errors import INTERNAL_ERROR_MESSAGE, ApiError, body_too_large, error_body, translate
from .security import scope_peer

log = logging.getLogger(__name__)

HEARTBEAT_PATH = "/api/v1/client/heartbeat"
_JSON_HEADERS = [(b"content-type", b"application/json")]

Answer = tuple[int, Any, dict[str, str]]
# The heartbeats_by_result label of a heartbeat refused before it reached Presence.
_REJECTED = {401: "unauthorized", 403: "forbidden", 429: "unauthorized"}


async def handle_heartbeat(
    ctx: ApiContext,
    token: str | None,
    peer: str,
    content_length: int | None,
    read_body: Callable[[int], Awaitable[bytes]],
) -> Answer:
    """One heartbeat request → (status, JSON body, extra headers).

    ``read_body(limit)`` returns the body, raising ApiError(413) past ``limit`` bytes. Domain
    errors become their API errors; anything else propagates (a bug: the caller logs it).
    """
    try:
        principal = ctx.gate.authenticate(token, peer)
        limit = ctx.config.http.max_body_bytes
        check_body_length(content_length, limit)
        hb = parse_heartbeat(parse_json_object(await read_body(limit)))
        require_client_access(principal, hb.client_id, write=True)
        return 200, await ctx.presence.heartbeat(hb, peer, registrar=registrar(principal)), {}
    except Exception as exc:  # noqa: BLE001 - only the domain's errors are translated; others re-raise
        err = translate(exc)
        if not isinstance(exc, RateLimited | UnknownClient | StorageUnavailable | FleetFull
                          | TooManyRegistrations):
            # Refused before reaching Presence (which counts its own refusals).
            ctx.presence.count_heartbeat(_REJECTED.get(err.status, "invalid"))
        return err.status, error_body(err.status, err.code, err.message, err.details), err.headers


def registrar(principal: Principal) -> str | None:
    """Whose registrations of new clients a heartbeat counts against: the token's subject;
    administrators are not limited."""
    return None if principal.is_admin else principal.sub


class HeartbeatFastPath:
    """ASGI middleware: heartbeats here, everything else to ``app``."""

    def __init__(self, app: Any, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope["path"] != HEARTBEAT_PATH
                or scope["method"] != "POST"):
            await self.app(scope, receive, send)
            return
        authorization: str | None = None
        content_length: int | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = None
        peer = scope_peer(scope, self.ctx.config.http.trusted_proxies)

        async def read_body(limit: int) -> bytes:
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ApiError(400, "bad_request", "the client went away before sending the body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise body_too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)

        try:
            status, body, headers = await handle_heartbeat(
                self.ctx, bearer_token(authorization), peer, content_length, read_body)
        except Exception:
            log.exception("unexpected error in POST %s", HEARTBEAT_PATH)
            status, body, headers = 500, error_body(500, "internal_error",
                                                    INTERNAL_ERROR_MESSAGE), {}
        payload = dumps_bytes(body)
        raw_headers = _JSON_HEADERS + [(b"content-length", str(len(payload)).encode())]
        for k, v in headers.items():
            raw_headers.append((k.lower().encode(), v.encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})


class ReadBodyFirst:
    """ASGI middleware: every HTTP request's body (up to ``http.max_body_bytes``) is received
    before the application sees the request, then handed to it as one message.

    An answer given before the body has arrived (a 401 for a bad token is decided from the
    headers alone) would otherwise make Hypercorn drop or stall the keep-alive connection when
    the body comes in a later TCP segment, and the client's *next* request on it would fail. A
    body over the limit is passed on as it stands: the application answers 413, with
    ``Connection: close`` added, since the rest of that body is never read.
    """

    def __init__(self, app: Any, max_body_bytes: Callable[[], int]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes()
        chunks: list[bytes] = []
        size = 0
        more = True
        disconnected = False
        while more and size <= limit:
            message = await receive()
            if message["type"] != "http.request":
                disconnected = True
                break
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
        pending: list[dict[str, Any]] = [{"type": "http.request", "body": b"".join(chunks),
                                          "more_body": more and not disconnected}]
        if disconnected:
            pending.append({"type": "http.disconnect"})

        async def replay() -> Any:
            if pending:
                return pending.pop(0)
            return await receive()

        if not more:
            await self.app(scope, replay, send)
            return

        async def send_closing(message: dict[str, Any]) -> None:
            # The rest of an over-limit body is never read, so the connection cannot carry
            # another request: say so, or the client's next request on it would fail.
            if message["type"] == "http.response.start":
                message = {**message, "headers": [
                    *[(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"],
                    (b"connection", b"close")]}
            await send(message)

        await self.app(scope, replay, send_closing)
