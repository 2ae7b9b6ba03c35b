"""The alerts' admin API (issue 14): silences, policy overrides, the delivery log, test alerts.

| method and path | role | what |
|---|---|---|
| POST ``/api/v1/silences`` | admin | ``{match: {clientIds?, tags?}, startsAt?, endsAt, comment, createdBy?}`` → 201 |
| GET ``/api/v1/silences`` | viewer+ | silences not yet ended, and maintenance windows' current or next occurrence |
| DELETE ``/api/v1/silences/{id}`` | admin | end a silence now |
| GET ``/api/v1/alerts/policies`` | viewer+ | the default policy, grouping, overrides (config and API) |
| PUT / DELETE ``/api/v1/alerts/policies/tags/{tag}`` | admin | a tag's override |
| PUT / DELETE ``/api/v1/alerts/policies/clients/{clientId}`` | admin | a client's override |
| GET ``/api/v1/alerts/deliveries`` | admin | targets, pending deliveries, the delivery log (``?target=&limit=``) |
| POST ``/api/v1/alerts/test`` | admin | ``{target}``: a test alert to a *configured* target, by name |

Targets are only ever the configured ones: a request names one, it never gives a URL (an API
that sends to a URL from a request is a server-side request forgery waiting to happen).
Changes are logged with the token's subject, and acknowledged once durable.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, request

from ..core.errors import ValidationFailed
from ..core.principal import Principal, require_role
from ..core.times import iso
from ..core.validation import CLIENT_ID_RE, TAG_RE, client_id_from_path
from ..service.alerts import parse_override
from .bodies import int_arg, request_json_object
from .context import ApiContext
from .errors import ApiError, json_response
from .security import request_principal

DEFAULT_LOG_LIMIT = 100
MAX_LOG_LIMIT = 1000


def add_routes(app: Quart, ctx: ApiContext) -> None:
    alerts = ctx.alerts

    def principal(role: str) -> Principal:
        p = request_principal(ctx)
        require_role(p, role)
        return p

    async def body() -> dict[str, Any]:
        return await request_json_object(ctx.config.http.max_body_bytes)

    # -- silences ------------------------------------------------------------------------------

    @app.post("/api/v1/silences")
    async def create_silence() -> Response:
        p = principal("admin")
        silence = await alerts.add_silence(await body(), p.sub)
        return json_response(silence.to_json(alerts.wall_clock()), 201)

    @app.get("/api/v1/silences")
    async def list_silences() -> Response:
        principal("viewer")
        return json_response({"silences": alerts.silences_json(),
                              "serverTime": _iso_now(ctx)})

    @app.delete("/api/v1/silences/<silence_id>")
    async def delete_silence(silence_id: str) -> Response:
        p = principal("admin")
        silence = await alerts.delete_silence(silence_id[:64], p.sub)
        if silence is None:
            raise ApiError(404, "unknown_silence", "no silence with this id is in force")
        return json_response({"deleted": True,
                              "silence": silence.to_json(alerts.wall_clock())})

    # -- policies ------------------------------------------------------------------------------

    @app.get("/api/v1/alerts/policies")
    async def policies() -> Response:
        principal("viewer")
        return json_response(alerts.policies_json())

    def scope_name(scope: str, name: str) -> tuple[str, str]:
        if scope == "tags":
            if not TAG_RE.fullmatch(name):
                raise ValidationFailed([{"field": "tag",
                                         "message": "must be 1 to 64 printable characters"}])
            return "tag", name
        if scope == "clients" and CLIENT_ID_RE.fullmatch(name):
            return "client", client_id_from_path(name)
        if scope == "clients":
            client_id_from_path(name)  # raises the usual 422
        raise ApiError(404, "not_found", "no such endpoint")

    @app.put("/api/v1/alerts/policies/<scope>/<path:name>")
    async def put_policy(scope: str, name: str) -> Response:
        p = principal("admin")
        key = scope_name(scope, name)
        override = parse_override(await body())
        await alerts.set_override(*key, override, p.sub)
        return json_response({"scope": key[0], "name": key[1],
                              "policy": alerts.policies_json()[key[0] + "s"][key[1]]})

    @app.delete("/api/v1/alerts/policies/<scope>/<path:name>")
    async def delete_policy(scope: str, name: str) -> Response:
        p = principal("admin")
        key = scope_name(scope, name)
        if not await alerts.delete_override(*key, p.sub):
            raise ApiError(404, "unknown_override",
                           f"no override of the admin API for this {key[0]}")
        return json_response({"deleted": True, "scope": key[0], "name": key[1]})

    # -- deliveries and tests ------------------------------------------------------------------

    @app.get("/api/v1/alerts/deliveries")
    async def deliveries() -> Response:
        principal("admin")
        target = request.args.get("target") or None
        if target is not None and target not in alerts.outbox.queues:
            raise ValidationFailed([{"field": "target", "message": "is not a configured target"}])
        limit = int_arg(request.args.get("limit"), "limit", DEFAULT_LOG_LIMIT, 1, MAX_LOG_LIMIT)
        return json_response(await alerts.deliveries(target, limit))

    @app.post("/api/v1/alerts/test")
    async def test_alert() -> Response:
        p = principal("admin")
        data = await request_json_object(ctx.config.http.max_body_bytes)
        target = data.get("target")
        extra = [k for k in data if k != "target"]
        if extra:
            raise ValidationFailed([{"field": str(extra[0])[:64], "message":
                                     "is not a known field (target: the name of a configured "
                                     "target; addresses come only from the configuration)"}])
        if not isinstance(target, str):
            raise ValidationFailed([{"field": "target",
                                     "message": "is required: the name of a configured target"}])
        delivery_id = alerts.send_test(target[:64], p.sub)
        return json_response({"target": target, "deliveryId": delivery_id, "queued": True}, 202)


def _iso_now(ctx: ApiContext) -> str | None:
    return iso(ctx.presence.wall_clock())
