"""The contract's documents, served without a token: ``GET /api/v1/openapi.json`` (the OpenAPI
3.1 document of every route, :mod:`rpad.api.openapi`), ``GET /api/v1/websocket/schema.json``
(the WebSocket protocol, :mod:`rpad.api.wsschema`) and ``GET /api/v1/docs`` (both as one
readable page, :mod:`rpad.api.reference`: no script, no CDN).

Resource handling: each document is built on its first request (every route is registered by
then) and kept, serialized, for the life of the app. Error handling: none needed (building is
pure).
"""

from __future__ import annotations

import functools

from quart import Quart, Response

from ..core.jsonenc import dumps
from .dashboard import SECURITY_HEADERS
from .openapi import OPENAPI_PATH, Answer, build_openapi, operation
from .reference import render_reference
from .wsschema import SCHEMA_PATH, build_ws_schema

DOCS_PATH = "/api/v1/docs"
# The page has no script and loads nothing: a strict policy of its own.
DOCS_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
               "form-action 'none'; frame-ancestors 'none'")


def add_routes(app: Quart) -> None:
    """Add the documents' routes (after every other route)."""

    @functools.cache
    def openapi_json() -> bytes:
        return dumps(build_openapi(app)).encode()

    @functools.cache
    def ws_json() -> bytes:
        return dumps(build_ws_schema()).encode()

    @functools.cache
    def page() -> bytes:
        return render_reference(build_openapi(app), build_ws_schema()).encode()

    @app.get(OPENAPI_PATH)
    @operation("This document: the OpenAPI 3.1 description of every route", tag="service",
               roles=None, answer=Answer(200, "the document", {"type": "object"}))
    async def openapi_document() -> Response:
        return Response(openapi_json(), content_type="application/json")

    @app.get(SCHEMA_PATH)
    @operation("The WebSocket protocol as a JSON Schema (2020-12)", tag="service", roles=None,
               description="Every client action ($defs/ClientMessage) and every message the "
                           "hub sends ($defs/ServerMessage), with its data.",
               answer=Answer(200, "the schema", {"type": "object"}))
    async def websocket_schema() -> Response:
        return Response(ws_json(), content_type="application/json")

    @app.get(DOCS_PATH)
    @operation("The API reference, readable", tag="service", roles=None,
               description="One HTML page generated from the OpenAPI document and the "
                           "WebSocket schema; no script, nothing loaded from elsewhere.",
               answer=Answer(200, "the page", {"type": "string"}, "text/html; charset=utf-8"))
    async def api_docs() -> Response:
        resp = Response(page(), content_type="text/html; charset=utf-8")
        resp.headers.update({**SECURITY_HEADERS, "Content-Security-Policy": DOCS_POLICY})
        return resp
