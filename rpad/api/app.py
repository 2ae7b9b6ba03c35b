"""The HTTP API (SPEC §3): a Quart-Trio app served by Hypercorn.

:func:`create_app` builds the app with every route group: presence (:mod:`rpad.api.clients`),
publish and the WebSocket management API (:mod:`rpad.api.hub_routes`), ``/metrics``
(:mod:`rpad.api.metrics`), the dashboard (:mod:`rpad.api.dashboard`) and the health check.
The daemon wraps it in the heartbeat fast path and :class:`~rpad.api.heartbeat.ReadBodyFirst`.

Error handling: every failure is an :class:`~rpad.api.errors.ApiError` (or a domain error
translated into one) answered as ``{"error", "message", "details"}``; an unexpected exception
is logged with its traceback and answered with a 500 body that reveals nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from quart import Quart, Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..core.times import iso
from ..hub.server import Hub
from . import alerts, clients, console, contract, dashboard, history, hub_routes
from . import metrics as metrics_mod
from .context import ApiContext
from .errors import INTERNAL_ERROR_MESSAGE, error_body, error_response, json_response, translate
from .openapi import Answer, operation

log = logging.getLogger(__name__)

BODY_TIMEOUT_SECONDS = 30
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "body_too_large", 408: "request_timeout"}


def create_app(ctx: ApiContext, *, hub: Hub, metrics: metrics_mod.Metrics,
               ws_url: Callable[[], str | None]) -> Quart:
    """The app with every route. ``ws_url()`` is the hub's bound URL (read per request: the hub
    binds after the app is made)."""
    # No built-in /static route: the dashboard serves the page's files by exact name.
    app = QuartTrio("rpad", static_folder=None)
    # "/api/v1//clients" is an unknown path (a JSON 404), not an HTML redirect.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = ctx.config.http.max_body_bytes
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_SECONDS
    app.config["JSON_SORT_KEYS"] = False

    @app.errorhandler(Exception)
    async def _on_error(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            status = exc.code or 500
            message = {
                404: "no such endpoint",
                405: f"{request.method} is not allowed on {request.path}",
                413: f"the body is larger than {ctx.config.http.max_body_bytes} bytes",
            }.get(status, exc.description or exc.name)
            # RFC 9110: a 405 lists the methods the path has.
            allowed = getattr(exc, "valid_methods", None) if status == 405 else None
            return json_response(error_body(status, _HTTP_CODES.get(status, "http_error"),
                                            message), status,
                                 {"Allow": ", ".join(sorted(allowed))} if allowed else None)
        try:
            err = translate(exc)
        except BaseException:
            log.exception("unexpected error in %s %s", request.method, request.path)
            return json_response(error_body(500, "internal_error", INTERNAL_ERROR_MESSAGE), 500)
        return error_response(err)

    @app.get("/api/v1/health")
    @operation("Liveness", tag="service", roles=None,
               answer=Answer(200, "rpad is up", "Health"))
    async def health() -> Response:
        view = ctx.presence.view
        body = {
            "status": "ok",
            "epoch": ctx.epoch,
            "uptimeSeconds": round(time.monotonic() - ctx.started_at, 3),
            "clients": len(view),
            "online": view.online_count,
            "serverTime": iso(ctx.presence.wall_clock()),
        }
        body.update(ctx.extra_health())
        return json_response(body)

    clients.add_routes(app, ctx)
    if ctx.history is not None:
        history.add_routes(app, ctx, ctx.history)
    alerts.add_routes(app, ctx)
    if ctx.tasks is not None and ctx.audit is not None and ctx.agents is not None:
        console.add_routes(app, ctx, ctx.tasks, ctx.audit, ctx.agents)
    hub_routes.add_routes(app, ctx, hub)
    metrics_mod.add_route(app, ctx, metrics)
    dashboard.add_routes(app, lambda: ctx.config, ws_url)
    contract.add_routes(app)  # last: it documents every route above
    return app
