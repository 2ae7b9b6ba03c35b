"""The presence routes (SPEC §3): heartbeats, clients, their status history and agent tokens.

Handlers are thin: authenticate, read and validate, call
:class:`~rpad.service.presence.Presence`, shape the JSON. Errors are raised as
:class:`~rpad.api.errors.ApiError` or domain errors, which the app's handler translates.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, request

from ..auth import bearer_token, parse_ttl
from ..core.errors import AuthError, StorageUnavailable, ValidationFailed
from ..core.principal import Principal, require_client_access, require_role
from ..core.queries import STATUSES, ClientQuery, query_clients
from ..core.times import iso
from ..core.validation import client_id_from_path, parse_registration
from ..service.presence import MAX_BATCH_HEARTBEATS
from .bodies import int_arg, request_body, request_json_object
from .context import ApiContext
from .errors import invalid_parameter, json_response, unknown_client
from .heartbeat import handle_heartbeat, registrar
from .openapi import ADMIN, SERVICE_UP, VIEWER_UP, Answer, Link, Param, operation
from .security import request_peer, request_principal

DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
DEFAULT_EVENTS_LIMIT = 100
MAX_EVENTS_LIMIT = 1000

# Links from an answer that names a client to what can be done with it next.
_CLIENT_LINKS = {
    "getClient": Link("get_client", {"clientId": "$response.body#/clientId"}),
    "getStatus": Link("heartbeat_status", {"clientId": "$response.body#/clientId"}),
    "getEvents": Link("client_events", {"clientId": "$response.body#/clientId"}),
    "mintToken": Link("mint_token", {"clientId": "$response.body#/clientId"}),
    "revokeTokens": Link("revoke_tokens", {"clientId": "$response.body#/clientId"}),
    "removeClient": Link("delete_client", {"clientId": "$response.body#/clientId"}),
}
_LIMIT = {"type": "integer", "minimum": 1}


def add_routes(app: Quart, ctx: ApiContext) -> None:
    presence = ctx.presence

    def principal() -> Principal:
        return request_principal(ctx)

    def peer() -> str:
        return request_peer(ctx.config.http.trusted_proxies)

    async def body_object(*, allow_empty: bool = False) -> dict[str, Any]:
        return await request_json_object(ctx.config.http.max_body_bytes, allow_empty=allow_empty)

    def known_client(client_id: str) -> str:
        cid = client_id_from_path(client_id)
        if presence.view.get(cid) is None:
            raise unknown_client()
        return cid

    # -- heartbeats ----------------------------------------------------------------------------

    @app.post("/api/v1/client/heartbeat")
    @operation(
        "Record a heartbeat", tag="heartbeats", roles=("agent", "service", "admin"),
        description="An agent token may only beat for its own id (its `sub`). Answered once "
                    "the heartbeat is committed to disk. `status: \"offline\"` is a clean "
                    "shutdown: the client is offline at once.",
        body="Heartbeat",
        answer=Answer(200, "recorded", "HeartbeatAnswer"),
        errors=("unknown_client", "rate_limited", "fleet_full", "too_many_registrations",
                "storage_unavailable", "backend_unavailable"),
        links={200: {k: _CLIENT_LINKS[k] for k in ("getStatus", "getClient", "getEvents")}})
    async def heartbeat() -> Response:
        # The same implementation as the ASGI fast path (rpad.api.heartbeat), which normally
        # answers this route before Quart sees it (http.fast_path = false routes it here).
        status, body, headers = await handle_heartbeat(
            ctx, bearer_token(request.headers.get("Authorization")), peer(),
            request.content_length, request_body)
        return json_response(body, status, headers)

    @app.post("/api/v1/client/heartbeats")
    @operation(
        "Record a batch of heartbeats", tag="heartbeats", roles=SERVICE_UP,
        description=f"At most {MAX_BATCH_HEARTBEATS} heartbeats (gateways), committed "
                    "together; each item is validated and answered on its own.",
        body="HeartbeatBatch",
        answer=Answer(200, "one result per heartbeat, in order", "HeartbeatBatchAnswer"),
        errors=("storage_unavailable", "backend_unavailable",))
    async def heartbeats() -> Response:
        who = principal()
        require_role(who, "service")
        items = (await body_object()).get("heartbeats")
        if not isinstance(items, list):
            raise ValidationFailed([{"field": "heartbeats",
                                     "message": "must be an array of heartbeat objects"}])
        if len(items) > MAX_BATCH_HEARTBEATS:
            raise ValidationFailed([{
                "field": "heartbeats",
                "message": f"must hold at most {MAX_BATCH_HEARTBEATS} heartbeats, got {len(items)}"}])
        results = await presence.heartbeat_batch(items, peer(), lambda _cid: True,
                                                 registrar=registrar(who))
        ok = sum(1 for r in results if r["ok"])
        return json_response({"accepted": ok, "rejected": len(results) - ok, "results": results})

    @app.get("/api/v1/client/heartbeat/status/<client_id>")
    @operation("Read one client's state", tag="heartbeats",
               roles=("agent", *VIEWER_UP),
               description="An agent token may only read its own client.",
               answer=Answer(200, "the client view", "ClientView"), errors=("unknown_client",))
    async def heartbeat_status(client_id: str) -> Response:
        p = principal()
        cid = client_id_from_path(client_id)
        require_client_access(p, cid, write=False)
        if p.role == "agent" or p.at_least("viewer"):
            client = await presence.client(cid)
            if client is None:
                raise unknown_client()
            return json_response(presence.view.view(client))
        raise AuthError(403, "not allowed")

    # -- clients -------------------------------------------------------------------------------

    @app.get("/api/v1/clients")
    @operation(
        "List clients", tag="clients", roles=VIEWER_UP,
        description="Sorted by id. `total` counts every match; `counts` the matches of `q` "
                    "and `tag` by status, whatever `status` asks.",
        query=(Param("status", "only clients in this state", {"enum": list(STATUSES)}),
               Param("q", "a case-insensitive substring of the id, name, IP address, version "
                          "or a tag", {"type": "string"}),
               Param("tag", "an exact tag", {"type": "string"}),
               Param("limit", "page size", {**_LIMIT, "maximum": MAX_LIST_LIMIT,
                                            "default": DEFAULT_LIST_LIMIT}),
               Param("offset", "clients to skip", {"type": "integer", "minimum": 0,
                                                   "maximum": 10**9, "default": 0})),
        answer=Answer(200, "a page of clients", "ClientPage"))
    async def list_clients() -> Response:
        require_role(principal(), "viewer")
        args = request.args
        status = args.get("status")
        if status is not None and status not in STATUSES:
            raise invalid_parameter("status", "must be online, offline or unknown")
        query = ClientQuery(
            status=status, q=args.get("q") or "", tag=args.get("tag"),
            limit=int_arg(args.get("limit"), "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT),
            offset=int_arg(args.get("offset"), "offset", 0, 0, 10**9))
        page = query_clients(presence.view, query)
        return json_response({
            "clients": [presence.view.view(c) for c in page.clients],
            "total": page.total,
            "limit": query.limit,
            "offset": query.offset,
            "counts": page.counts,
        })

    @app.post("/api/v1/clients")
    @operation(
        "Register a client", tag="clients", roles=ADMIN,
        description="Registers a client or updates its registration (a new name, tags, "
                    "timeout or metadata).",
        body="Registration",
        answer=(Answer(201, "registered", "ClientView"),
                Answer(200, "it was registered already: updated", "ClientView")),
        errors=("fleet_full", "storage_unavailable", "backend_unavailable"),
        links={201: _CLIENT_LINKS, 200: _CLIENT_LINKS})
    async def register_client() -> Response:
        require_role(principal(), "admin")
        reg = parse_registration(await body_object())
        view, created = await presence.register(reg)
        return json_response(view, 201 if created else 200)

    @app.get("/api/v1/clients/<client_id>")
    @operation("Read one client", tag="clients", roles=VIEWER_UP,
               description="The client view, with its uptime over 24 h, 7 d and 30 d "
                           "(`uptime`, null when the database cannot be read).",
               answer=Answer(200, "the client view", "ClientDetail"), errors=("unknown_client",))
    async def get_client(client_id: str) -> Response:
        require_role(principal(), "viewer")
        client = await presence.client(client_id_from_path(client_id))
        if client is None:
            raise unknown_client()
        body = presence.view.view(client)
        if ctx.history is not None:
            # Availability over 24 h / 7 d / 30 d (null when the database cannot be read:
            # the client's state is still served from memory).
            try:
                body["uptime"] = await ctx.history.uptime_figures(client.client_id)
            except StorageUnavailable:
                body["uptime"] = None
        return json_response(body)

    @app.delete("/api/v1/clients/<client_id>")
    @operation("Remove a client", tag="clients", roles=ADMIN,
               description="Announced as CLIENT_REMOVED on the client_status topic.",
               answer=Answer(200, "removed", "Removed"),
               errors=("unknown_client", "storage_unavailable", "backend_unavailable"))
    async def delete_client(client_id: str) -> Response:
        require_role(principal(), "admin")
        view = await presence.remove(known_client(client_id))
        return json_response({"removed": True, "client": view})

    @app.get("/api/v1/clients/<client_id>/events")
    @operation("Read a client's status history", tag="clients", roles=VIEWER_UP,
               description="Newest first: when it went online or offline, and why.",
               query=(Param("limit", "how many events", {
                   **_LIMIT, "maximum": MAX_EVENTS_LIMIT, "default": DEFAULT_EVENTS_LIMIT}),),
               answer=Answer(200, "the history", "StatusHistory"),
               errors=("unknown_client", "storage_unavailable", "backend_unavailable"))
    async def client_events(client_id: str) -> Response:
        require_role(principal(), "viewer")
        cid = known_client(client_id)
        limit = int_arg(request.args.get("limit"), "limit", DEFAULT_EVENTS_LIMIT, 1,
                        MAX_EVENTS_LIMIT)
        rows = await presence.status_history(cid, limit)
        return json_response({
            "clientId": cid,
            "events": [{"at": iso(at), "status": status, "reason": reason}
                       for at, status, reason in rows],
        })

    # -- agent tokens --------------------------------------------------------------------------

    @app.post("/api/v1/clients/<client_id>/tokens")
    @operation("Mint an agent token", tag="tokens", roles=ADMIN,
               description="A token for the client's agent. With manual registration the "
                           "client must be registered.",
               body="TokenRequest", body_required=False,
               answer=Answer(201, "the token", "AgentToken"), errors=("unknown_client",))
    async def mint_token(client_id: str) -> Response:
        require_role(principal(), "admin")
        cid = client_id_from_path(client_id)
        if presence.view.get(cid) is None and ctx.config.presence.registration == "manual":
            raise unknown_client()
        ttl: float | None = None
        body = await body_object(allow_empty=True)
        unknown = [str(k)[:64] for k in body if k != "ttl"]
        if unknown:
            raise ValidationFailed([{"field": k, "message": "is not a known field (ttl)"}
                                    for k in unknown])
        raw = body.get("ttl")
        if raw is not None:
            try:
                if not isinstance(raw, str):
                    raise ValueError("must be a string such as 30d or never")  # noqa: TRY004 (caught just below)
                ttl = parse_ttl(raw)
            except ValueError as exc:
                raise ValidationFailed([{"field": "ttl", "message": str(exc)}]) from None
        token = ctx.auth.mint(role="agent", sub=cid, ttl_seconds=ttl)
        now = presence.wall_clock()
        return json_response({
            "clientId": cid,
            "token": token,
            "generation": presence.token_generation(cid),
            "expiresAt": iso(now + ttl) if ttl is not None else None,
        }, 201)

    @app.delete("/api/v1/clients/<client_id>/tokens")
    @operation("Revoke a client's agent tokens", tag="tokens", roles=ADMIN,
               description="Every agent token minted for the client so far stops working "
                           "(durably: registering the id again does not revive them).",
               answer=Answer(200, "revoked", "Revoked"), errors=("storage_unavailable", "backend_unavailable",))
    async def revoke_tokens(client_id: str) -> Response:
        require_role(principal(), "admin")
        cid = client_id_from_path(client_id)
        gen = await presence.revoke_tokens(cid)
        return json_response({"clientId": cid, "revoked": True, "generation": gen})
