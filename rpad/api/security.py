"""Who is asking, for every HTTP route: the client's address (behind trusted proxies, by
:func:`rpad.core.proxy.client_address`) and the principal of its bearer token (by
:class:`rpad.service.gate.Gate`, the same as the WebSocket hub's)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from quart import request

from ..auth import bearer_token
from ..core.principal import Principal
from ..core.proxy import client_address
from .context import ApiContext


def request_peer(trusted: Collection[str]) -> str:
    """The current Quart request's client address."""
    return client_address(request.remote_addr or "unknown", request.headers.get, trusted)


def scope_peer(scope: dict[str, Any], trusted: Collection[str]) -> str:
    """An ASGI request's client address (the heartbeat fast path)."""
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if trusted and peer in trusted:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        return client_address(peer, headers.get, trusted)
    return peer


def request_principal(ctx: ApiContext) -> Principal:
    """The current Quart request's principal; raises AuthError or TooManyFailures."""
    return ctx.gate.authenticate(bearer_token(request.headers.get("Authorization")),
                                 request_peer(ctx.config.http.trusted_proxies))
