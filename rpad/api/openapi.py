"""The OpenAPI 3.1 document of the HTTP API, built from the app's own routes.

Every route function carries its description, put there by the :func:`operation` decorator
right under the route's own decorator::

    @app.get("/api/v1/clients/<client_id>")
    @operation("Read one client", tag="clients", roles=VIEWER_UP,
               answer=Answer(200, "the client view", "ClientView"), errors=("unknown_client",))
    async def get_client(client_id: str) -> Response: ...

:func:`build_openapi` walks the app's ``url_map``: the paths, methods and path parameters come
from the routes themselves, the rest from each route's :class:`Operation`, the schemas from
:mod:`rpad.api.schemas`. What every route of a kind can answer is added by rule, once: a route
with roles gets the bearer scheme and 401, 403 and 429 (too many failed authentications); one
with a body gets 400, 408 (the body too slow), 413 and 422; one with path or query parameters
422, and 404 for a path that matches no client; every route 429 too_many_connections and 503
server_busy (rpad.listeners and rpad.httpserve refuse a connection or a request over their caps
before any route sees it). A route without an :class:`Operation` is listed by
:func:`undocumented`, and the tests fail on it.

Served (no token) at ``GET /api/v1/openapi.json``; :mod:`rpad.api.reference` renders it and the
WebSocket schema as the page at ``GET /api/v1/docs``.

Error handling: none at run time beyond building once on first use; a route that cannot be
described is reported by :func:`undocumented`, not raised.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs
from quart import Quart

from .. import __version__
from . import console_schemas
from . import schemas as S
from .alert_schemas import alert_components

F = TypeVar("F", bound=Callable[..., Any])

OPENAPI_PATH = "/api/v1/openapi.json"
ATTRIBUTE = "__rpad_operation__"

VIEWER_UP = ("viewer", "operator", "service", "admin")
# The console and tasks: admins, and operators on the clients their exec claim covers.
EXEC_ROLES = ("operator", "admin")
SERVICE_UP = ("service", "admin")
ADMIN = ("admin",)

# Every error code the HTTP API answers with, by status (rpad.api.errors, rpad.api.app).
ERROR_STATUS = {
    "invalid_json": 400, "bad_request": 400,
    "unauthorized": 401, "token_expired": 401, "token_revoked": 401,
    "forbidden": 403, "console_disabled": 403,
    "not_found": 404, "unknown_client": 404, "not_connected": 404, "unknown_silence": 404,
    "unknown_override": 404, "unknown_target": 404,
    "request_timeout": 408,
    "not_running": 409, "fleet_full": 409, "test_pending": 409,
    "body_too_large": 413,
    "validation_failed": 422,
    "rate_limited": 429, "too_many_auth_failures": 429, "too_many_tasks": 429,
    "too_many_registrations": 429, "too_many_connections": 429,
    "storage_unavailable": 503, "not_ready": 503, "server_busy": 503,
    # Cluster mode: the shared backend (Redis) is unreachable from this node; nothing written.
    "backend_unavailable": 503,
}
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"description": "the scheme: Bearer", "schema": S.string()}},
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    503: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
}
_STATUS_TEXT = {400: "Bad request", 401: "No token or a bad token",
                403: "The token's role or subject may not do this", 404: "Not found",
                408: "The body arrived too slowly",
                409: "Not in a state that allows this (a task not running, the fleet full)",
                413: "The body is too large", 422: "A bad field or parameter",
                429: "Too many requests", 503: "Unavailable for now"}

# Path parameters by the name routes give them: (the document's name, schema).
PATH_PARAMETERS: dict[str, tuple[str, S.Schema]] = {
    "client_id": ("clientId", S.CLIENT_ID),
    "user_id": ("userId", S.USER_ID),
    "task_id": ("taskId", console_schemas.TASK_ID),
}


@attrs.frozen
class Answer:
    """One documented answer: its status, what it means and its body (a schema name of
    :func:`rpad.api.schemas.components`, a schema, or None for no body)."""

    status: int
    description: str
    schema: str | S.Schema | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Param:
    name: str
    description: str
    schema: S.Schema
    where: str = "query"
    required: bool = False


@attrs.frozen
class Link:
    """An OpenAPI link from an answer to another operation (by its function's name), for
    clients and for stateful tests: ``parameters`` maps the target's parameters to runtime
    expressions such as ``$response.body#/clientId``."""

    operation: str
    parameters: Mapping[str, str]
    description: str = ""


@attrs.frozen
class Refusal:
    """A 422 that a request valid by the schemas can still get, for a rule JSON Schema cannot
    state (between two fields, or against the server's clock, state or configuration): the
    field it names (ending in ``[]`` for any item of an array: ``clientIds[]`` stands for
    ``clientIds[3]``) and the start of its message. Listed in the document as
    ``x-rpad-refusals`` and in the operation's description; tests/schemathesis_hooks.py accepts
    a 422 for a schema-valid request only when each of its details is one of these."""

    field: str
    message: str


@attrs.frozen
class Operation:
    summary: str
    tag: str
    # Who may call it (None: no token needed).
    roles: tuple[str, ...] | None
    answers: tuple[Answer, ...]
    description: str = ""
    # A request body: a schema name; body_required=False for an optional one.
    body: str | None = None
    body_required: bool = True
    query: tuple[Param, ...] = ()
    path: tuple[Param, ...] = ()
    # Error codes of ERROR_STATUS this route answers beyond those added by rule.
    errors: tuple[str, ...] = ()
    links: Mapping[int, Mapping[str, Link]] = attrs.field(factory=dict)
    refusals: tuple[Refusal, ...] = ()


def operation(summary: str, *, tag: str, roles: tuple[str, ...] | None,
              answer: Answer | Iterable[Answer], description: str = "",
              body: str | None = None, body_required: bool = True,
              query: tuple[Param, ...] = (), path: tuple[Param, ...] = (),
              errors: tuple[str, ...] = (),
              links: Mapping[int, Mapping[str, Link]] | None = None,
              refusals: tuple[Refusal, ...] = ()) -> Callable[[F], F]:
    """Describe a route: put it right under the route's decorator (``@app.get(...)``)."""
    answers = (answer,) if isinstance(answer, Answer) else tuple(answer)
    op = Operation(summary, tag, roles, answers, description, body, body_required, query, path,
                   errors, links or {}, refusals)

    def attach(fn: F) -> F:
        setattr(fn, ATTRIBUTE, op)
        return fn

    return attach


_RULE_PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_IMPLICIT_METHODS = {"HEAD", "OPTIONS"}


def _routes(app: Quart) -> Iterable[tuple[str, str, str, Operation | None, list[str]]]:
    """(method, document path, endpoint, operation, path parameter names) of every route."""
    for rule in app.url_map.iter_rules():
        names = [m.group(2) for m in _RULE_PARAM.finditer(rule.rule)]
        path = _RULE_PARAM.sub(lambda m: "{" + PATH_PARAMETERS.get(
            m.group(2), (m.group(2), None))[0] + "}", rule.rule)
        op = getattr(app.view_functions.get(rule.endpoint), ATTRIBUTE, None)
        for method in sorted((rule.methods or set()) - _IMPLICIT_METHODS):
            yield method, path, rule.endpoint, op, names


def undocumented(app: Quart) -> list[str]:
    """Every route (``METHOD /path``) without an operation, or with a path parameter that
    is described nowhere."""
    missing = []
    for method, path, _, op, names in _routes(app):
        declared = {p.name for p in op.path} if op is not None else set()
        if op is None or any(n not in PATH_PARAMETERS and n not in declared for n in names):
            missing.append(f"{method} {path}")
    return missing


def _content(schema: str | S.Schema | None, content_type: str) -> dict[str, Any]:
    if schema is None:
        return {}
    body = S.ref(schema) if isinstance(schema, str) else schema
    return {"content": {content_type: {"schema": body}}}


def _error_response(status: int, codes: list[str]) -> dict[str, Any]:
    schema = {"allOf": [S.ref("Error"), {"properties": {"error": {"enum": codes}}}]}
    response: dict[str, Any] = {
        "description": f"{_STATUS_TEXT.get(status, 'Error')}: {', '.join(codes)}",
        **_content(schema, "application/json")}
    if status in _ERROR_HEADERS:
        response["headers"] = _ERROR_HEADERS[status]
    return response


def _parameters(op: Operation, names: list[str]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    declared = {p.name: p for p in op.path}
    for name in names:
        if name in declared:
            p = declared[name]
            params.append({"name": p.name, "in": "path", "required": True,
                           "description": p.description, "schema": p.schema})
        else:
            doc_name, schema = PATH_PARAMETERS[name]
            params.append({"name": doc_name, "in": "path", "required": True, "schema": schema})
    for q in op.query:
        params.append({"name": q.name, "in": q.where, "required": q.required,
                       "description": q.description, "schema": q.schema})
    return params


def _operation(endpoint: str, op: Operation, names: list[str]) -> dict[str, Any]:
    codes = list(op.errors) + ["too_many_connections", "server_busy"]
    if op.roles is not None:
        codes += ["unauthorized", "token_expired", "token_revoked", "forbidden",
                  "too_many_auth_failures"]
    if op.body is not None:
        codes += ["invalid_json", "bad_request", "request_timeout", "body_too_large",
                  "validation_failed"]
    if names or op.query or op.refusals:
        codes.append("validation_failed")
    if names:
        codes.append("not_found")
    responses: dict[str, Any] = {}
    for a in op.answers:
        response: dict[str, Any] = {"description": a.description,
                                    **_content(a.schema, a.content_type)}
        if a.headers:
            response["headers"] = {name: {"description": text, "schema": S.string()}
                                   for name, text in a.headers.items()}
        links = op.links.get(a.status)
        if links:
            response["links"] = {
                name: {"operationId": link.operation, "parameters": dict(link.parameters),
                       **({"description": link.description} if link.description else {})}
                for name, link in links.items()}
        responses[str(a.status)] = response
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(ERROR_STATUS[code], []).append(code)
    for status, status_codes in sorted(by_status.items()):
        if str(status) not in responses:
            responses[str(status)] = _error_response(status, status_codes)
    doc: dict[str, Any] = {
        "operationId": endpoint, "summary": op.summary, "tags": [op.tag],
        "responses": dict(sorted(responses.items())),
    }
    description = op.description
    if op.refusals:
        doc["x-rpad-refusals"] = [{"field": r.field, "message": r.message}
                                  for r in op.refusals]
        rules = "; ".join(f"`{r.field}` {r.message}" for r in op.refusals)
        description = (f"{description}\n\nRules beyond the schemas (a 422 naming the "
                       f"field): {rules}.").strip()
    if op.roles is None:
        doc["security"] = []
    else:
        doc["security"] = [{"bearer": []}]
        doc["x-rpad-roles"] = list(op.roles)
        description = f"**Roles:** {', '.join(op.roles)}.\n\n{description}".strip()
    if description:
        doc["description"] = description
    params = _parameters(op, names)
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {"required": op.body_required,
                              **_content(op.body, "application/json")}
    return doc


TAGS = [
    {"name": "heartbeats", "description": "Agents and gateways report that they are alive."},
    {"name": "clients", "description": "The clients rpad knows, their state and history."},
    {"name": "tokens", "description": "Agent tokens: minted and revoked per client."},
    {"name": "websocket", "description": "Publishing to the hub and managing its connections "
                                         "(the protocol itself: GET /api/v1/websocket/schema.json)."},
    {"name": "service", "description": "Health, metrics, the dashboard and these documents."},
    {"name": "console", "description": "Batch commands on many clients, the audit log of who "
                                       "ran what where, the agents' control channels (the "
                                       "console itself is on the WebSocket: terminal.*)."},
]


def build_openapi(app: Quart) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every documented route of ``app``."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, endpoint, op, names in _routes(app):
        if op is None:
            continue
        paths.setdefault(path, {})[method.lower()] = _operation(endpoint, op, names)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "rpad",
            "version": __version__,
            "summary": "A realtime presence daemon: agents heartbeat over HTTP, dashboards "
                       "watch over WebSocket.",
            "description": (
                "Every answer is JSON with camelCase keys; every refusal is "
                "`{\"error\", \"message\", \"details\"}` with a code for programs, a sentence "
                "for people and, for 422, each bad field by its camelCase path. Tokens are "
                "JWTs sent as `Authorization: Bearer <jwt>`; each operation lists the roles "
                "that may call it (`x-rpad-roles`). The WebSocket protocol is described by "
                "the JSON Schema at `/api/v1/websocket/schema.json`."),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": TAGS,
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {**S.components(), **alert_components(),
                        **console_schemas.components()},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "A token from `rpad token --role ROLE --sub ID` (or an agent "
                               "token from POST /api/v1/clients/{clientId}/tokens)."}},
        },
    }
